// The artifact contract and the denoising loop, with the OpenVINO C++ API. It follows
// runtime/artifact.py (checks) and runtime/pipeline.py (tokenize, encode, plan-driven loop,
// decode) step by step, in the same float32 operations, so images match the Python runtime.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <openvino/openvino.hpp>

#include "json.hpp"
#include "sdrt/host.hpp"

#ifndef SDRT_TOKENIZERS_EXTENSION
#define SDRT_TOKENIZERS_EXTENSION ""
#endif

namespace fs = std::filesystem;

namespace sdrt {

namespace {

constexpr long long kSchemaVersion = 1;  // the newest manifest schema this host reads
constexpr const char* kFormat = "sdrt-artifact";

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string read_text(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error("Cannot read " + path.string() + ".");
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

// A manifest path: relative, forward slashes, no "..", inside the artifact folder.
fs::path inside(const fs::path& root, const std::string& relative) {
  fs::path path(relative);
  bool escapes = relative.empty() || path.is_absolute() || relative.front() == '/' || relative.front() == '\\';
  for (const auto& part : path) escapes = escapes || part == "..";
  if (escapes) {
    throw Error("The manifest names \"" + relative + "\", a path outside the artifact folder; refusing to load it "
                "(an artifact may only refer to its own files).");
  }
  return root / path;
}

struct Component {
  std::string name;
  fs::path onnx;
  std::vector<std::string> inputs, outputs;  // names in manifest order
};

// One plan step: x' = sum latent_weights[k] x[i-k] + sum output_weights[k] out[i-k] + noise_weight noise.
struct PlanStep {
  float timestep = 0, input_scale = 1, noise_weight = 0;
  std::vector<double> latent_weights, output_weights;
};

struct Plan {
  std::string sampler;
  double init_noise_sigma = 1;
  std::vector<PlanStep> steps;
};

std::vector<double> numbers(const json::Value& array, const std::string& what) {
  std::vector<double> out;
  for (const auto& value : array.array(what)) out.push_back(value.number(what));
  return out;
}

Plan plan_from_json(const json::Value& data, const std::string& what) {
  Plan plan;
  plan.sampler = data.at("sampler", what).string(what + " sampler");
  plan.init_noise_sigma = data.at("init_noise_sigma", what).number(what + " init_noise_sigma");
  for (const auto& step : data.at("steps", what).array(what + " steps")) {
    PlanStep s;
    s.timestep = static_cast<float>(step.at("timestep", what).number(what + " timestep"));
    s.input_scale = static_cast<float>(step.at("input_scale", what).number(what + " input_scale"));
    s.latent_weights = numbers(step.at("latent_weights", what), what + " latent_weights");
    s.output_weights = numbers(step.at("output_weights", what), what + " output_weights");
    const json::Value* noise = step.find("noise_weight");
    s.noise_weight = noise ? static_cast<float>(noise->number(what + " noise_weight")) : 0.0f;
    plan.steps.push_back(std::move(s));
  }
  if (plan.steps.empty()) throw Error(what + " has no steps.");
  return plan;
}

ov::Tensor float_tensor(const ov::Shape& shape) { return ov::Tensor(ov::element::f32, shape); }

std::size_t count(const ov::Shape& shape) {
  std::size_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

}  // namespace

struct Pipeline::Impl {
  fs::path root;
  json::Value manifest;
  HostOptions options;
  ov::Core core;
  Component text_encoder, unet, vae_decoder;
  ov::InferRequest tokenizer_request, text_request, unet_request, vae_request;
  int latent_channels = 4, vae_scale_factor = 8, size_multiple = 8, default_height = 512, default_width = 512;
  float vae_scaling_factor = 0.18215f, vae_shift_factor = 0.0f;
  bool has_shift = false;
  fs::path plans_path;
  std::unique_ptr<json::Value> plans;  // read on first use
  double load_seconds = 0;
  Timings timings;

  void open(const std::string& folder) {
    root = fs::path(folder);
    if (!fs::is_directory(root)) {
      throw Error("Artifact folder " + folder + " does not exist; export one with `sdrt export CHECKPOINT -o " +
                  folder + "`.");
    }
    fs::path manifest_path = root / "sdrt.json";
    if (!fs::is_regular_file(manifest_path)) {
      throw Error(folder + " has no sdrt.json, so it is not a complete sdrt artifact; export it again with "
                  "`sdrt export`.");
    }
    manifest = json::Value::parse(read_text(manifest_path), manifest_path.string());
    const json::Value* format = manifest.find("format");
    if (format == nullptr || !format->is_string() || format->string("format") != kFormat) {
      throw Error(manifest_path.string() + " is not an sdrt manifest (its format is not \"sdrt-artifact\").");
    }
    long long version = manifest.at("schema_version", "The manifest").integer("schema_version");
    if (version > kSchemaVersion || version < 1) {
      throw Error(folder + " was written with manifest schema version " + std::to_string(version) +
                  ", but this host reads version " + std::to_string(kSchemaVersion) +
                  "; rebuild the host from the sdrt release that wrote the artifact.");
    }
    check_files();
    std::string family = manifest.at("family", "The manifest").string("family");
    if (family != "sd1" && family != "sd2") {
      throw Error("This host runs the sd1 and sd2 families; the artifact is \"" + family + "\".");
    }
    const json::Value& pipeline = manifest.at("pipeline", "The manifest");
    if (const json::Value* guidance = pipeline.find("guidance")) {
      if (guidance->string("guidance") != "classifier_free") {
        throw Error("This host runs classifier-free guidance; the artifact's UNet takes guidance as an input (a "
                    "latent consistency model). Generate with sdrt's Python runtime.");
      }
    }
    latent_channels = static_cast<int>(pipeline.at("latent_channels", "pipeline").integer("latent_channels"));
    vae_scale_factor = static_cast<int>(pipeline.at("vae_scale_factor", "pipeline").integer("vae_scale_factor"));
    const json::Value* multiple = pipeline.find("size_multiple");
    size_multiple = multiple ? static_cast<int>(multiple->integer("size_multiple")) : vae_scale_factor;
    const auto& size = pipeline.at("default_size", "pipeline").array("default_size");
    default_height = static_cast<int>(size.at(0).integer("default_size"));
    default_width = static_cast<int>(size.at(1).integer("default_size"));
    vae_scaling_factor = static_cast<float>(pipeline.at("vae_scaling_factor", "pipeline").number("vae_scaling_factor"));
    const json::Value* shift = pipeline.find("vae_shift_factor");
    has_shift = shift != nullptr && !shift->is_null();
    if (has_shift) vae_shift_factor = static_cast<float>(shift->number("vae_shift_factor"));
    if (const json::Value* plans_file = manifest.find("sampler_plans")) {
      plans_path = inside(root, plans_file->string("sampler_plans"));
    }

    text_encoder = component_for_role("text_encoder");
    unet = component_for_role("denoiser");
    vae_decoder = component_for_role("vae_decoder");

    auto started = Clock::now();
    load_tokenizer();
    ov::AnyMap config = {ov::hint::inference_precision(precision()),
                         ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
    text_request = compile(text_encoder, config);
    unet_request = compile(unet, config);
    vae_request = compile(vae_decoder, config);
    load_seconds = seconds_since(started);
  }

  ov::element::Type precision() const {
    if (options.precision == "f32" || options.precision == "fp32") return ov::element::f32;
    if (options.precision == "bf16") return ov::element::bf16;
    throw Error("precision must be f32 or bf16, got \"" + options.precision + "\".");
  }

  ov::InferRequest compile(const Component& component, const ov::AnyMap& config) {
    try {
      return core.compile_model(component.onnx.string(), options.device, config).create_infer_request();
    } catch (const ov::Exception& error) {
      throw Error("OpenVINO could not compile " + component.onnx.string() + " for " + options.device + ": " +
                  error.what());
    }
  }

  void check_files() {
    const auto& files = manifest.at("files", "The manifest").object("files");
    for (const auto& [relative, record] : files) {
      fs::path path = inside(root, relative);
      if (!fs::is_regular_file(path)) {
        throw Error(root.string() + " is incomplete: " + relative + " is missing. Copy the whole artifact folder "
                    "again.");
      }
      auto expected = static_cast<std::uintmax_t>(record.at("size", relative).integer(relative + " size"));
      if (fs::file_size(path) != expected) {
        throw Error(relative + " in " + root.string() + " has " + std::to_string(fs::file_size(path)) +
                    " bytes, the manifest says " + std::to_string(expected) +
                    ": the file is corrupt or was changed. Copy or export it again.");
      }
      if (options.verify_checksums && sha256_file(path.string()) != record.at("sha256", relative).string(relative)) {
        throw Error(relative + " in " + root.string() + " does not match its SHA-256 checksum in the manifest: the "
                    "file is corrupt or was changed. Copy or export the artifact again.");
      }
    }
  }

  Component component_for_role(const std::string& role) {
    const auto& components = manifest.at("components", "The manifest").object("components");
    for (const auto& [name, entry] : components) {
      if (entry.at("role", name).string(name + " role") != role) continue;
      Component component;
      component.name = name;
      component.onnx = inside(root, entry.at("path", name).string(name + " path"));
      for (const auto& tensor : entry.at("inputs", name).array(name + " inputs")) {
        component.inputs.push_back(tensor.at("name", name).string(name + " input name"));
      }
      for (const auto& tensor : entry.at("outputs", name).array(name + " outputs")) {
        component.outputs.push_back(tensor.at("name", name).string(name + " output name"));
      }
      return component;
    }
    throw Error("The artifact at " + root.string() + " has no " + role + " component.");
  }

  void load_tokenizer() {
    const json::Value* entry = nullptr;
    for (const auto& tokenizer : manifest.at("tokenizers", "The manifest").array("tokenizers")) {
      if (tokenizer.at("for_component", "tokenizer").string("for_component") == text_encoder.name) entry = &tokenizer;
    }
    if (entry == nullptr) throw Error("The artifact has no tokenizer for " + text_encoder.name + ".");
    const json::Value* model = entry->at("files", "tokenizer").find("openvino_tokenizer");
    if (model == nullptr) {
      throw Error("The artifact has no OpenVINO tokenizer model (it was exported by an sdrt without C++ host "
                  "support); export it again with `sdrt export`.");
    }
    std::string extension = options.tokenizers_extension;
    if (extension.empty()) {
      const char* from_env = std::getenv("SDRT_TOKENIZERS_EXTENSION");
      extension = from_env != nullptr && *from_env != '\0' ? from_env : SDRT_TOKENIZERS_EXTENSION;
    }
    if (extension.empty() || !fs::is_regular_file(extension)) {
      throw Error("The OpenVINO tokenizers extension library " +
                  (extension.empty() ? std::string("was not given") : "\"" + extension + "\" does not exist") +
                  "; install openvino-tokenizers (pip install openvino-tokenizers) and pass its "
                  "libopenvino_tokenizers.so with --tokenizers-extension or SDRT_TOKENIZERS_EXTENSION.");
    }
    try {
      core.add_extension(extension);
      tokenizer_request = core.compile_model(inside(root, model->string("openvino_tokenizer")).string(), "CPU")
                              .create_infer_request();
    } catch (const ov::Exception& error) {
      throw Error("OpenVINO could not load the tokenizer model with the extension " + extension +
                  " (its version must match OpenVINO's): " + error.what());
    }
  }

  const json::Value& plan_document() {
    if (!plans) {
      if (plans_path.empty()) {
        throw Error("The artifact has no sampler plans (it was exported by an sdrt without C++ host support); add "
                    "them with `sdrt plan ARTIFACT --scheduler NAME --steps N`, or export it again.");
      }
      plans = std::make_unique<json::Value>(json::Value::parse(read_text(plans_path), plans_path.string()));
    }
    return *plans;
  }

  std::string default_scheduler() { return plan_document().at("default_sampler", "sampler_plans").string("sampler"); }

  Plan find_plan(const Request& request) {
    if (!request.plan_file.empty()) {
      json::Value data = json::Value::parse(read_text(request.plan_file), request.plan_file);
      Plan plan = plan_from_json(data, request.plan_file);
      const json::Value* planned = data.find("num_inference_steps");
      long long steps = planned ? planned->integer("num_inference_steps") : static_cast<long long>(plan.steps.size());
      if ((request.steps > 0 && request.steps != steps) ||
          (!request.scheduler.empty() && request.scheduler != plan.sampler)) {
        throw Error(request.plan_file + " is a " + plan.sampler + " plan of " + std::to_string(steps) +
                    " steps; the request asks for " + (request.scheduler.empty() ? plan.sampler : request.scheduler) +
                    " with " + std::to_string(request.steps) + ".");
      }
      return plan;
    }
    std::string sampler = request.scheduler.empty() ? default_scheduler() : request.scheduler;
    const json::Value& all = plan_document().at("plans", "sampler_plans");
    const json::Value* by_steps = all.find(sampler);
    const json::Value* data = by_steps ? by_steps->find(std::to_string(request.steps)) : nullptr;
    if (data == nullptr) {
      std::string held;
      if (by_steps != nullptr) {
        std::vector<int> counts;
        for (const auto& [steps, plan] : by_steps->object("plans")) counts.push_back(std::stoi(steps));
        std::sort(counts.begin(), counts.end());
        for (int n : counts) held += (held.empty() ? "" : ", ") + std::to_string(n);
      }
      std::string add = "sdrt plan " + root.string() + " --scheduler " + sampler + " --steps " +
                        std::to_string(request.steps);
      throw Error("The artifact has no " + sampler + " plan for " + std::to_string(request.steps) + " steps" +
                  (held.empty() ? std::string(" (nor any other " + sampler + " plan)")
                                : " (it has " + held + ")") +
                  "; add it with `" + add + "`, or write one with `" + add + " -o FILE` and pass --plan FILE.");
    }
    return plan_from_json(*data, sampler + " plan");
  }

  ov::Tensor tokenize(const std::vector<std::string>& texts) {
    ov::Tensor strings(ov::element::string, ov::Shape{texts.size()});
    std::copy(texts.begin(), texts.end(), strings.data<std::string>());
    tokenizer_request.set_input_tensor(strings);
    tokenizer_request.infer();
    return tokenizer_request.get_tensor("input_ids");
  }

  Image generate(const Request& request, const StepCallback& on_step) {
    int height = request.height > 0 ? request.height : default_height;
    int width = request.width > 0 ? request.width : default_width;
    if (height % size_multiple != 0 || width % size_multiple != 0) {
      throw Error("height and width must be multiples of " + std::to_string(size_multiple) +
                  " for this model, got " + std::to_string(width) + "x" + std::to_string(height) + ".");
    }
    if (request.steps < 1 && request.plan_file.empty()) throw Error("steps must be at least 1.");
    if (!std::isfinite(request.guidance) || request.guidance < 0) throw Error("guidance must be a finite number >= 0.");
    Plan plan = find_plan(request);
    bool guided = request.guidance > 1.0f;  // as diffusers: guidance <= 1 skips the unconditional branch
    timings = Timings{};
    auto started = Clock::now();

    // Text: [negative, prompt] in one batch when guidance is on, as the Python runtime does.
    auto tick = Clock::now();
    std::vector<std::string> texts;
    if (guided) texts.push_back(request.negative_prompt);
    texts.push_back(request.prompt);
    ov::Tensor ids = tokenize(texts);
    text_request.set_tensor(text_encoder.inputs.at(0), ids);
    text_request.infer();
    ov::Tensor hidden = text_request.get_tensor(text_encoder.outputs.at(0));
    ov::Tensor embeddings(hidden.get_element_type(), hidden.get_shape());
    hidden.copy_to(embeddings);
    timings.text_encoder = seconds_since(tick);

    ov::Shape shape{1, static_cast<std::size_t>(latent_channels), static_cast<std::size_t>(height / vae_scale_factor),
                    static_cast<std::size_t>(width / vae_scale_factor)};
    std::size_t n = count(shape);
    std::vector<float> x = gaussian_noise(request.seed, n, 0);
    auto sigma = static_cast<float>(plan.init_noise_sigma);
    for (float& v : x) v *= sigma;

    // The UNet's inputs are allocated once and refilled every step; with guidance on, the latents
    // go in twice, as the unconditional and the conditional half of one batch.
    std::size_t copies = guided ? 2 : 1;
    ov::Tensor sample = float_tensor({copies, shape[1], shape[2], shape[3]});
    ov::Tensor timestep = float_tensor({copies});
    unet_request.set_tensor(unet.inputs.at(0), sample);
    unet_request.set_tensor(unet.inputs.at(1), timestep);
    unet_request.set_tensor(unet.inputs.at(2), embeddings);

    std::deque<std::vector<float>> latents_history, outputs_history;
    std::size_t depth = 1;
    for (const auto& step : plan.steps) {
      depth = std::max({depth, step.latent_weights.size(), step.output_weights.size()});
    }
    for (std::size_t index = 0; index < plan.steps.size(); ++index) {
      tick = Clock::now();
      const PlanStep& step = plan.steps[index];
      float* in = sample.data<float>();
      for (std::size_t c = 0; c < copies; ++c) {
        for (std::size_t i = 0; i < n; ++i) in[c * n + i] = step.input_scale * x[i];
      }
      std::fill_n(timestep.data<float>(), copies, step.timestep);
      unet_request.infer();
      const float* raw = unet_request.get_tensor(unet.outputs.at(0)).data<const float>();
      std::vector<float> out(raw + (copies - 1) * n, raw + copies * n);
      if (guided) {  // uncond + g * (cond - uncond)  (Ho & Salimans 2022)
        for (std::size_t i = 0; i < n; ++i) out[i] = raw[i] + request.guidance * (out[i] - raw[i]);
      }
      latents_history.push_front(x);
      outputs_history.push_front(std::move(out));
      if (latents_history.size() > depth) latents_history.pop_back();
      if (outputs_history.size() > depth) outputs_history.pop_back();

      // The update of kernels/sampler_step.py: zero weights are skipped, terms added in order.
      std::vector<float> next(n, 0.0f);
      auto accumulate = [&](const std::vector<double>& weights, const std::deque<std::vector<float>>& history) {
        for (std::size_t k = 0; k < weights.size() && k < history.size(); ++k) {
          if (weights[k] == 0.0) continue;
          auto w = static_cast<float>(weights[k]);
          const std::vector<float>& value = history[k];
          for (std::size_t i = 0; i < n; ++i) next[i] += w * value[i];
        }
      };
      accumulate(step.latent_weights, latents_history);
      accumulate(step.output_weights, outputs_history);
      if (step.noise_weight != 0.0f) {
        std::vector<float> noise = gaussian_noise(request.seed, n, 1 + index);
        for (std::size_t i = 0; i < n; ++i) next[i] += step.noise_weight * noise[i];
      }
      x = std::move(next);
      timings.steps.push_back(seconds_since(tick));
      if (on_step) on_step(static_cast<int>(index), static_cast<int>(plan.steps.size()));
    }
    for (double s : timings.steps) timings.denoising += s;

    tick = Clock::now();
    ov::Tensor latents = float_tensor(shape);
    float* scaled = latents.data<float>();
    for (std::size_t i = 0; i < n; ++i) {
      scaled[i] = x[i] / vae_scaling_factor;
      if (has_shift) scaled[i] += vae_shift_factor;
    }
    vae_request.set_tensor(vae_decoder.inputs.at(0), latents);
    vae_request.infer();
    ov::Tensor decoded = vae_request.get_tensor(vae_decoder.outputs.at(0));
    const float* pixels = decoded.data<const float>();
    ov::Shape out_shape = decoded.get_shape();  // 1, 3, H, W
    Image image;
    image.height = static_cast<int>(out_shape[2]);
    image.width = static_cast<int>(out_shape[3]);
    std::size_t plane = out_shape[2] * out_shape[3];
    image.rgb.resize(plane * 3);
    for (std::size_t p = 0; p < plane; ++p) {
      for (std::size_t c = 0; c < 3; ++c) {
        // kernels/image.py: clip(x / 2 + 0.5, 0, 1), then round(v * 255) half to even.
        float v = std::clamp(pixels[c * plane + p] / 2.0f + 0.5f, 0.0f, 1.0f);
        image.rgb[p * 3 + c] = static_cast<std::uint8_t>(std::nearbyint(v * 255.0f));
      }
    }
    timings.vae_decoder = seconds_since(tick);
    timings.total = seconds_since(started);
    return image;
  }
};

Pipeline::Pipeline(const std::string& artifact_folder, const HostOptions& options) : impl_(std::make_unique<Impl>()) {
  impl_->options = options;
  try {
    impl_->open(artifact_folder);
  } catch (const ov::Exception& error) {
    throw Error(std::string("OpenVINO failed while opening the artifact: ") + error.what());
  }
}

Pipeline::~Pipeline() = default;
Pipeline::Pipeline(Pipeline&&) noexcept = default;
Pipeline& Pipeline::operator=(Pipeline&&) noexcept = default;

Image Pipeline::generate(const Request& request, const StepCallback& on_step) {
  try {
    return impl_->generate(request, on_step);
  } catch (const ov::Exception& error) {
    throw Error(std::string("OpenVINO failed while generating: ") + error.what());
  }
}

const Timings& Pipeline::last_timings() const { return impl_->timings; }
double Pipeline::load_seconds() const { return impl_->load_seconds; }
std::string Pipeline::default_scheduler() const { return impl_->default_scheduler(); }

}  // namespace sdrt
