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
  const json::Value* entry = nullptr;         // its manifest entry

  bool has_input(const std::string& tensor) const {
    return std::find(inputs.begin(), inputs.end(), tensor) != inputs.end();
  }
  bool has_output(const std::string& tensor) const {
    return std::find(outputs.begin(), outputs.end(), tensor) != outputs.end();
  }
};

// One text encoder as the UNet reads it (the manifest's pipeline.text_encoders): which of its
// stacked layer states at CLIP skip 0, and whether its pooled projection is an added condition.
struct TextEncoderUse {
  Component component;
  int layer = -1;
  bool pooled = false;
  ov::InferRequest tokenizer, request;
};

// One plan step: x' = sum latent_weights[k] x[i-k] + sum output_weights[k] out[i-k] + noise_weight noise.
struct PlanStep {
  float timestep = 0, input_scale = 1, noise_weight = 0;
  std::vector<double> latent_weights, output_weights;
};

// x starts as init_image_weight * latents given + init_noise_sigma * noise (stream 0).
struct Plan {
  std::string sampler;
  double init_noise_sigma = 1, init_image_weight = 0;
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
  const json::Value* image_weight = data.find("init_image_weight");
  plan.init_image_weight = image_weight ? image_weight->number(what + " init_image_weight") : 0.0;
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
  std::vector<TextEncoderUse> encoders;
  Component unet, vae_decoder;
  ov::InferRequest unet_request, vae_request;
  std::vector<std::string> time_id_fields;  // SDXL's size conditions, in the UNet's order
  bool force_zeros_for_empty_prompt = false, embedded_guidance = false;
  double num_train_timesteps = 1000;
  int latent_channels = 4, vae_scale_factor = 8, size_multiple = 8, default_height = 512, default_width = 512;
  float vae_scaling_factor = 0.18215f, vae_shift_factor = 0.0f;
  bool has_shift = false;
  fs::path plans_path;
  bool extension_added = false;
  std::unique_ptr<json::Value> plans;  // read on first use
  double load_seconds = 0, denoise_seconds = 0;
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
    if (family != "sd1" && family != "sd2" && family != "sdxl") {
      throw Error("This host runs the sd1, sd2 and sdxl families; the artifact is \"" + family + "\".");
    }
    const json::Value& pipeline = manifest.at("pipeline", "The manifest");
    if (const json::Value* guidance = pipeline.find("guidance")) {
      std::string kind = guidance->string("guidance");
      if (kind != "classifier_free" && kind != "embedded") {
        throw Error("This host runs classifier-free and embedded guidance; the artifact's is \"" + kind + "\".");
      }
      embedded_guidance = kind == "embedded";
    }
    if (const json::Value* fields = pipeline.find("time_ids")) {
      for (const auto& field : fields->array("time_ids")) {
        std::string name = field.string("time_ids");
        if (name != "original_size" && name != "crops_coords_top_left" && name != "target_size" &&
            name != "aesthetic_score") {
          throw Error("This host does not know the time-id field \"" + name + "\"; rebuild it from a newer sdrt.");
        }
        time_id_fields.push_back(name);
      }
    }
    if (const json::Value* zeros = pipeline.find("force_zeros_for_empty_prompt")) {
      force_zeros_for_empty_prompt = zeros->boolean("force_zeros_for_empty_prompt");
    }
    latent_channels = static_cast<int>(pipeline.at("latent_channels", "pipeline").integer("latent_channels"));
    if (const json::Value* trained = pipeline.at("scheduler", "pipeline").find("num_train_timesteps")) {
      num_train_timesteps = trained->number("num_train_timesteps");
    }
    vae_scale_factor = static_cast<int>(pipeline.at("vae_scale_factor", "pipeline").integer("vae_scale_factor"));
    const json::Value* multiple = pipeline.find("size_multiple");
    size_multiple = multiple ? static_cast<int>(multiple->integer("size_multiple")) : vae_scale_factor;
    const auto& size = pipeline.at("default_size", "pipeline").array("default_size");
    default_height = static_cast<int>(size.at(0).integer("default_size"));
    default_width = static_cast<int>(size.at(1).integer("default_size"));
    if (const json::Value* plans_file = manifest.find("sampler_plans")) {
      plans_path = inside(root, plans_file->string("sampler_plans"));
    }

    unet = component_for_role("denoiser");
    vae_decoder = component_for_role("vae_decoder", options.vae);
    // the VAE's latent scaling: an added VAE's own (its decoder's entry), else the pipeline's
    const json::Value& factors = options.vae.empty() ? pipeline : *vae_decoder.entry;
    const json::Value* scaling = factors.find(options.vae.empty() ? "vae_scaling_factor" : "scaling_factor");
    vae_scaling_factor = scaling ? static_cast<float>(scaling->number("scaling_factor")) : 1.0f;
    const json::Value* shift = factors.find(options.vae.empty() ? "vae_shift_factor" : "shift_factor");
    has_shift = shift != nullptr && !shift->is_null();
    if (has_shift) vae_shift_factor = static_cast<float>(shift->number("vae_shift_factor"));

    auto started = Clock::now();
    ov::AnyMap config = {ov::hint::inference_precision(precision()),
                         ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
    const json::Value* uses = pipeline.find("text_encoders");
    if (uses == nullptr) {  // an artifact written before the manifest described its text encoders: SD 1.x / 2.x
      TextEncoderUse use;
      use.component = component_for_role("text_encoder");
      encoders.push_back(std::move(use));
    } else {
      for (const auto& entry : uses->array("text_encoders")) {
        TextEncoderUse use;
        use.component = component_named(entry.at("component", "text_encoders").string("component"));
        use.layer = static_cast<int>(entry.at("layer", "text_encoders").integer("layer"));
        use.pooled = entry.at("pooled", "text_encoders").boolean("pooled");
        encoders.push_back(std::move(use));
      }
    }
    for (auto& use : encoders) {
      use.tokenizer = load_tokenizer(use.component.name);
      use.request = compile(use.component, config);
    }
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

  Component component_named(const std::string& name) {
    const auto& components = manifest.at("components", "The manifest").object("components");
    auto found = components.find(name);
    if (found == components.end()) throw Error("The artifact at " + root.string() + " has no " + name + " component.");
    const json::Value& entry = found->second;
    Component component;
    component.name = name;
    component.entry = &entry;
    component.onnx = inside(root, entry.at("path", name).string(name + " path"));
    for (const auto& tensor : entry.at("inputs", name).array(name + " inputs")) {
      component.inputs.push_back(tensor.at("name", name).string(name + " input name"));
    }
    for (const auto& tensor : entry.at("outputs", name).array(name + " outputs")) {
      component.outputs.push_back(tensor.at("name", name).string(name + " output name"));
    }
    return component;
  }

  // The component of `role`; for the VAE's roles, that of the VAE added under the name `vae`
  // (entries with a "vae" field), or the checkpoint's own when `vae` is empty.
  Component component_for_role(const std::string& role, const std::string& vae = "") {
    const auto& components = manifest.at("components", "The manifest").object("components");
    for (const auto& [name, entry] : components) {
      const json::Value* added = entry.find("vae");
      if (entry.at("role", name).string(name + " role") == role && (added ? added->string("vae") : "") == vae) {
        return component_named(name);
      }
    }
    throw Error("The artifact at " + root.string() + " has no " + role + " component" +
                (vae.empty() ? std::string() : " of the VAE \"" + vae + "\" (add it with `sdrt add-vae`)") + ".");
  }

  // A tensor's size along `axis` as the manifest declares it (a fixed number; 0 when symbolic).
  static std::size_t declared_size(const Component& component, const std::string& tensor, std::size_t axis) {
    for (const auto& spec : component.entry->at("inputs", component.name).array("inputs")) {
      if (spec.at("name", component.name).string("name") != tensor) continue;
      const auto& shape = spec.at("shape", component.name).array("shape");
      if (axis < shape.size() && shape[axis].is_number()) return static_cast<std::size_t>(shape[axis].integer("shape"));
    }
    return 0;
  }

  ov::InferRequest load_tokenizer(const std::string& component) {
    const json::Value* entry = nullptr;
    for (const auto& tokenizer : manifest.at("tokenizers", "The manifest").array("tokenizers")) {
      if (tokenizer.at("for_component", "tokenizer").string("for_component") == component) entry = &tokenizer;
    }
    if (entry == nullptr) throw Error("The artifact has no tokenizer for " + component + ".");
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
      if (!extension_added) core.add_extension(extension);
      extension_added = true;
      return core.compile_model(inside(root, model->string("openvino_tokenizer")).string(), "CPU")
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

  // The plan of the request: the stored (or --plan file's) one for its sampler and steps, cut at
  // denoising_end; with denoising_start, the artifact's hand-off plan (runtime/samplers.py).
  Plan find_plan(const Request& request) {
    if (request.denoising_start) return handoff_plan(request);
    Plan plan = full_plan(request);
    if (request.denoising_end) {  // runtime/samplers.py end_plan_at
      double cut = cutoff(*request.denoising_end, "denoising_end");
      auto kept = std::count_if(plan.steps.begin(), plan.steps.end(), [&](const PlanStep& s) { return s.timestep >= cut; });
      plan.steps.resize(static_cast<std::size_t>(kept));
    }
    return plan;
  }

  // diffusers' discrete_timestep_cutoff: the training timestep `fraction` of the way to the image.
  double cutoff(double fraction, const std::string& name) const {
    if (!(fraction > 0.0 && fraction < 1.0)) {
      throw Error(name + " must be a fraction between 0 and 1 (exclusive), got " + std::to_string(fraction) + ".");
    }
    return std::nearbyint(num_train_timesteps - fraction * num_train_timesteps);  // Python's round: half to even
  }

  // A refiner's plan: the steps below the denoising_start cutoff of the full schedule, stored in
  // sampler_plans.json's "handoffs" under the index of their first step.
  Plan handoff_plan(const Request& request) {
    if (!request.plan_file.empty()) {
      throw Error("A hand-off plan comes from the refiner's artifact; leave out the plan file with denoising_start.");
    }
    double cut = cutoff(*request.denoising_start, "denoising_start");
    Plan full = full_plan(request);
    auto remaining = std::count_if(full.steps.begin(), full.steps.end(), [&](const PlanStep& s) { return s.timestep < cut; });
    std::string first = std::to_string(request.steps - remaining);
    if (remaining == 0) {  // the base ran every step: the latents are final
      Plan none = full;
      none.steps.clear();
      none.init_noise_sigma = 0;
      none.init_image_weight = 1;
      return none;
    }
    const json::Value* handoffs = plan_document().find("handoffs");
    const json::Value* by_steps = handoffs ? handoffs->find(full.sampler) : nullptr;
    const json::Value* by_start = by_steps ? by_steps->find(std::to_string(request.steps)) : nullptr;
    const json::Value* data = by_start ? by_start->find(first) : nullptr;
    if (data == nullptr) {
      std::ostringstream fraction;
      fraction << *request.denoising_start;
      throw Error("The artifact has no " + full.sampler + " hand-off plan for " + std::to_string(request.steps) +
                  " steps from step " + first + " (denoising_start " + fraction.str() + "); add it with `sdrt plan " +
                  root.string() + " --scheduler " + full.sampler + " --steps " + std::to_string(request.steps) +
                  " --denoising-start " + fraction.str() + "`.");
    }
    return plan_from_json(*data, full.sampler + " hand-off plan");
  }

  Plan full_plan(const Request& request) {
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

  static ov::Tensor tokenize(ov::InferRequest& tokenizer, const std::vector<std::string>& texts) {
    ov::Tensor strings(ov::element::string, ov::Shape{texts.size()});
    std::copy(texts.begin(), texts.end(), strings.data<std::string>());
    tokenizer.set_input_tensor(strings);
    tokenizer.infer();
    return tokenizer.get_tensor("input_ids");
  }

  // The text encoders' states side by side ([batch, tokens, summed width]) and the pooled
  // projection ([batch, width]; empty when no encoder gives one) of texts[i] for encoder i
  // (runtime/conditioning.py encode_text: the layer `layer - clip_skip` of each).
  void encode(const std::vector<std::vector<std::string>>& texts, int clip_skip, std::vector<float>& states,
              ov::Shape& states_shape, std::vector<float>& pooled) {
    std::vector<ov::Tensor> hidden;
    std::size_t width = 0;
    for (std::size_t e = 0; e < encoders.size(); ++e) {
      TextEncoderUse& use = encoders[e];
      use.request.set_tensor(use.component.inputs.at(0), tokenize(use.tokenizer, texts[e]));
      use.request.infer();
      ov::Tensor layer;
      if (use.component.has_output("hidden_states")) {
        ov::Tensor layers = use.request.get_tensor("hidden_states");  // [layers + 1, batch, tokens, width]
        ov::Shape shape = layers.get_shape();
        long index = static_cast<long>(shape[0]) + use.layer - clip_skip;
        if (clip_skip < 0 || index < 1) {
          throw Error("clip_skip must be in [0, " + std::to_string(static_cast<long>(shape[0]) - 1 + use.layer) +
                      "] for this model's " + use.component.name + ".");
        }
        std::size_t size = shape[1] * shape[2] * shape[3];
        layer = float_tensor({shape[1], shape[2], shape[3]});
        std::copy_n(layers.data<const float>() + static_cast<std::size_t>(index) * size, size, layer.data<float>());
      } else {
        if (clip_skip != 0 || use.layer != -1) {
          throw Error("This artifact's text encoder gives its last layer only; export it again for clip_skip.");
        }
        ov::Tensor last = use.request.get_tensor(use.component.outputs.at(0));
        layer = float_tensor(last.get_shape());
        last.copy_to(layer);
      }
      width += layer.get_shape()[2];
      hidden.push_back(layer);
      if (use.pooled) {
        ov::Tensor projected = use.request.get_tensor("text_embeds");
        pooled.assign(projected.data<const float>(), projected.data<const float>() + projected.get_size());
      }
    }
    ov::Shape first = hidden.at(0).get_shape();
    states_shape = {first[0], first[1], width};
    states.assign(count(states_shape), 0.0f);
    std::size_t offset = 0;
    for (const ov::Tensor& part : hidden) {  // concatenated along the last axis
      std::size_t w = part.get_shape()[2];
      const float* source = part.data<const float>();
      for (std::size_t row = 0; row < first[0] * first[1]; ++row) {
        std::copy_n(source + row * w, w, states.data() + row * width + offset);
      }
      offset += w;
    }
  }

  // The time ids of the manifest's fields for one half of the batch (runtime/request.py
  // SizeConditions): sizes default to the image's (height, width), the crop to (0, 0). The
  // unconditional half repeats the positive sizes and crop unless a negative one is given; then
  // each negative size defaults to its positive one and the negative crop to (0, 0).
  std::vector<float> time_ids(const Request& request, int height, int width, bool negative) const {
    Pair image{height, width};
    Pair original = request.original_size.value_or(image), target = request.target_size.value_or(image);
    Pair crop = request.crops_coords_top_left;
    float aesthetic = request.aesthetic_score;
    if (negative) {
      bool given = request.negative_original_size || request.negative_target_size ||
                   request.negative_crops_coords_top_left;
      original = request.negative_original_size.value_or(original);
      target = request.negative_target_size.value_or(target);
      crop = request.negative_crops_coords_top_left.value_or(given ? Pair{0, 0} : crop);
      aesthetic = request.negative_aesthetic_score;
    }
    std::vector<float> ids;
    for (const std::string& field : time_id_fields) {
      if (field == "aesthetic_score") {
        ids.push_back(aesthetic);
        continue;
      }
      const Pair& pair = field == "original_size" ? original : field == "target_size" ? target : crop;
      ids.insert(ids.end(), {static_cast<float>(pair[0]), static_cast<float>(pair[1])});
    }
    return ids;
  }

  static void check_conditions(const Request& request) {
    auto check = [](const std::optional<Pair>& pair, const char* name, int least) {
      if (pair && ((*pair)[0] < least || (*pair)[1] < least)) {
        throw Error(std::string(name) + " must be a pair of integers (height, width), each >= " +
                    std::to_string(least) + ", got (" + std::to_string((*pair)[0]) + ", " +
                    std::to_string((*pair)[1]) + ").");
      }
    };
    check(request.original_size, "original_size", 1);
    check(request.target_size, "target_size", 1);
    check(request.negative_original_size, "negative_original_size", 1);
    check(request.negative_target_size, "negative_target_size", 1);
    check(request.crops_coords_top_left, "crops_coords_top_left", 0);
    check(request.negative_crops_coords_top_left, "negative_crops_coords_top_left", 0);
    if (!std::isfinite(request.aesthetic_score) || !std::isfinite(request.negative_aesthetic_score)) {
      throw Error("aesthetic_score and negative_aesthetic_score must be finite numbers.");
    }
  }

  // A latent consistency model's guidance input (runtime/conditioning.py guidance_embedding).
  static std::vector<float> guidance_embedding(float guidance, std::size_t width) {
    float w = (guidance - 1.0f) * 1000.0f;
    std::size_t half = width / 2;
    float step = std::log(10000.0f) / static_cast<float>(half - 1);
    std::vector<float> embedding(width, 0.0f);
    for (std::size_t i = 0; i < half; ++i) {
      float angle = w * std::exp(static_cast<float>(i) * -step);
      embedding[i] = std::sin(angle);
      embedding[half + i] = std::cos(angle);
    }
    return embedding;
  }

  static bool default_conditions(const Request& r) {
    return !r.original_size && !r.target_size && !r.negative_original_size && !r.negative_target_size &&
           !r.negative_crops_coords_top_left && r.crops_coords_top_left == Pair{0, 0} && r.aesthetic_score == 6.0f &&
           r.negative_aesthetic_score == 2.5f;
  }

  Latents denoise(const Request& request, const StepCallback& on_step) {
    int height = request.height > 0 ? request.height : default_height;
    int width = request.width > 0 ? request.width : default_width;
    if (request.latents) {  // a base model's latents to finish: their size, unless the request names it
      const std::vector<std::size_t>& given = request.latents->shape;
      bool fits = given.size() == 4 && given[0] == 1 && given[1] == static_cast<std::size_t>(latent_channels) &&
                  count(ov::Shape(given.begin(), given.end())) == request.latents->values.size();
      if (!fits) {
        throw Error("latents must have the shape [1, " + std::to_string(latent_channels) +
                    ", height / " + std::to_string(vae_scale_factor) + ", width / " +
                    std::to_string(vae_scale_factor) + "] with as many values, as a base model's denoise() gives.");
      }
      if (request.height <= 0) height = static_cast<int>(given[2]) * vae_scale_factor;
      if (request.width <= 0) width = static_cast<int>(given[3]) * vae_scale_factor;
      if (given[2] * vae_scale_factor != static_cast<std::size_t>(height) ||
          given[3] * vae_scale_factor != static_cast<std::size_t>(width)) {
        throw Error("The latents are of a " + std::to_string(given[3] * vae_scale_factor) + "x" +
                    std::to_string(given[2] * vae_scale_factor) + " image, the request asks for " +
                    std::to_string(width) + "x" + std::to_string(height) + "; leave the size out.");
      }
    }
    if (request.denoising_start && !request.latents) {
      throw Error("denoising_start continues a base model's latents (denoise() with denoising_end): pass them as "
                  "latents.");
    }
    if (request.latents && !request.denoising_start) {
      throw Error("latents are finished from denoising_start; set it to the base model's denoising_end.");
    }
    check_conditions(request);
    if (time_id_fields.empty() && !default_conditions(request)) {
      throw Error("original_size, crops_coords_top_left, target_size, aesthetic_score and their negative_ forms are "
                  "SDXL's size conditions; this artifact's UNet takes none.");
    }
    if (height % size_multiple != 0 || width % size_multiple != 0) {
      throw Error("height and width must be multiples of " + std::to_string(size_multiple) +
                  " for this model, got " + std::to_string(width) + "x" + std::to_string(height) + ".");
    }
    if (request.steps < 1 && request.plan_file.empty()) throw Error("steps must be at least 1.");
    if (!std::isfinite(request.guidance) || request.guidance < 0) throw Error("guidance must be a finite number >= 0.");
    Plan plan = find_plan(request);
    // as diffusers: guidance <= 1 skips the unconditional branch; a latent consistency model has none
    bool guided = request.guidance > 1.0f && !embedded_guidance;
    if (embedded_guidance && request.negative_prompt) {
      throw Error("This latent consistency model takes guidance as an input of its UNet and runs no unconditional "
                  "half, so a negative prompt would have no effect; leave it out.");
    }
    bool zero_negative = guided && force_zeros_for_empty_prompt && !request.negative_prompt;
    timings = Timings{};
    auto started = Clock::now();

    // Text: [negative, prompt] in one batch when guidance is on, as the Python runtime does; an
    // SDXL base without a negative prompt guides against zeros (force_zeros_for_empty_prompt).
    auto tick = Clock::now();
    std::vector<std::vector<std::string>> texts(encoders.size());
    for (std::size_t e = 0; e < encoders.size(); ++e) {
      const std::optional<std::string>& second = e == 0 ? std::nullopt : request.negative_prompt_2;
      if (guided && !zero_negative) texts[e].push_back(second.value_or(request.negative_prompt.value_or("")));
      texts[e].push_back(e == 0 ? request.prompt : request.prompt_2.value_or(request.prompt));
    }
    std::vector<float> states, pooled;
    ov::Shape states_shape;
    encode(texts, request.clip_skip, states, states_shape, pooled);
    if (zero_negative) {  // the unconditional half: zeros before the prompt's
      states.insert(states.begin(), states.size(), 0.0f);
      states_shape[0] *= 2;
      pooled.insert(pooled.begin(), pooled.size(), 0.0f);
    }
    ov::Tensor embeddings = float_tensor(states_shape);
    std::copy(states.begin(), states.end(), embeddings.data<float>());
    timings.text_encoder = seconds_since(tick);

    ov::Shape shape{1, static_cast<std::size_t>(latent_channels), static_cast<std::size_t>(height / vae_scale_factor),
                    static_cast<std::size_t>(width / vae_scale_factor)};
    std::size_t n = count(shape);
    std::vector<float> x = gaussian_noise(request.seed, n, 0);
    auto sigma = static_cast<float>(plan.init_noise_sigma);
    for (float& v : x) v *= sigma;
    if (plan.init_image_weight != 0.0 && !request.latents) {
      throw Error("This plan starts from a model's latents (a hand-off plan): pass them as latents with "
                  "denoising_start.");
    }
    if (plan.init_image_weight != 0.0) {  // a hand-off: the given latents (plus the plan's noise, none for SDXL)
      auto weight = static_cast<float>(plan.init_image_weight);
      for (std::size_t i = 0; i < n; ++i) x[i] = weight * request.latents->values[i] + x[i];
    }

    // The UNet's inputs are allocated once and refilled every step; with guidance on, the latents
    // go in twice, as the unconditional and the conditional half of one batch.
    std::size_t copies = guided ? 2 : 1;
    ov::Tensor sample = float_tensor({copies, shape[1], shape[2], shape[3]});
    ov::Tensor timestep = float_tensor({copies});
    unet_request.set_tensor("sample", sample);
    unet_request.set_tensor("timestep", timestep);
    unet_request.set_tensor("encoder_hidden_states", embeddings);
    if (unet.has_input("text_embeds")) {  // SDXL: the pooled projection and the size conditions, per half
      ov::Tensor text_embeds = float_tensor({copies, pooled.size() / copies});
      std::copy(pooled.begin(), pooled.end(), text_embeds.data<float>());
      unet_request.set_tensor("text_embeds", text_embeds);
      std::vector<float> rows;
      if (guided) rows = time_ids(request, height, width, true);  // the unconditional half
      std::vector<float> positive = time_ids(request, height, width, false);
      rows.insert(rows.end(), positive.begin(), positive.end());
      ov::Tensor ids_tensor = float_tensor({copies, positive.size()});
      std::copy(rows.begin(), rows.end(), ids_tensor.data<float>());
      unet_request.set_tensor("time_ids", ids_tensor);
    }
    if (unet.has_input("timestep_cond")) {
      std::vector<float> embedding = guidance_embedding(request.guidance, declared_size(unet, "timestep_cond", 1));
      ov::Tensor cond = float_tensor({1, embedding.size()});
      std::copy(embedding.begin(), embedding.end(), cond.data<float>());
      unet_request.set_tensor("timestep_cond", cond);
    }

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
    timings.total = denoise_seconds = seconds_since(started);
    return Latents{std::vector<std::size_t>(shape.begin(), shape.end()), std::move(x)};
  }

  Image decode(const Latents& given) {
    auto tick = Clock::now();
    ov::Shape shape(given.shape.begin(), given.shape.end());
    std::size_t n = count(shape);
    if (shape.size() != 4 || shape[0] != 1 || shape[1] != static_cast<std::size_t>(latent_channels) ||
        n != given.values.size()) {
      throw Error("decode() takes latents of shape [1, " + std::to_string(latent_channels) +
                  ", height / f, width / f], as denoise() gives.");
    }
    ov::Tensor latents = float_tensor(shape);
    float* scaled = latents.data<float>();
    for (std::size_t i = 0; i < n; ++i) {
      scaled[i] = given.values[i] / vae_scaling_factor;
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
    timings.total = denoise_seconds + timings.vae_decoder;
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
  Latents latents = denoise(request, on_step);
  return decode(latents);
}

Latents Pipeline::denoise(const Request& request, const StepCallback& on_step) {
  try {
    return impl_->denoise(request, on_step);
  } catch (const ov::Exception& error) {
    throw Error(std::string("OpenVINO failed while generating: ") + error.what());
  }
}

Image Pipeline::decode(const Latents& latents) {
  try {
    return impl_->decode(latents);
  } catch (const ov::Exception& error) {
    throw Error(std::string("OpenVINO failed while decoding: ") + error.what());
  }
}

const Timings& Pipeline::last_timings() const { return impl_->timings; }
double Pipeline::load_seconds() const { return impl_->load_seconds; }
std::string Pipeline::default_scheduler() const { return impl_->default_scheduler(); }

}  // namespace sdrt
