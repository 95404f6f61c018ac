// sdrt-host: the command-line front of the C++ host library (include/sdrt/host.hpp).
#include <array>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <optional>
#include <string>

#include "sdrt/host.hpp"

namespace {

const char* kUsage = R"(usage:
  sdrt-host generate --artifact DIR --prompt TEXT [options] -o out.png
  sdrt-host noise --seed S --count N [--stream K]

generate options:
  --negative TEXT         what the image should not show (default: none; an SDXL base then guides
                          against zero embeddings, as diffusers)
  --prompt-2 TEXT         SDXL: the second text encoder's prompt (default: --prompt)
  --negative-2 TEXT       SDXL: the second text encoder's negative prompt (default: --negative)
  --clip-skip N           condition on N layers before the model's own (diffusers' clip_skip; default 0)
  --vae NAME              decode with a VAE added to the artifact under NAME (e.g. taesd)
  --refiner DIR           SDXL: finish the image with this refiner artifact from --high-noise-frac of the
                          schedule on (diffusers' ensemble of experts; the refiner's VAE decodes)
  --high-noise-frac F     with --refiner: the fraction of the schedule the base model runs (default 0.8)
  --original-size WxH, --target-size WxH, --crops-coords-top-left TOP,LEFT
                          SDXL's size conditions (default: the image's size, 0,0)
  --negative-original-size WxH, --negative-target-size WxH, --negative-crops-coords-top-left TOP,LEFT
                          the unconditional half's (default: the positive ones; once one is given, the
                          others' sizes are the positive ones and the crop 0,0)
  --aesthetic-score A, --negative-aesthetic-score A
                          the SDXL refiner's aesthetic conditions (default 6 and 2.5)
  --steps N               denoising steps (default 20; with --plan, the plan's)
  --guidance G            classifier-free guidance scale; <= 1 turns it off (default 7.5)
  --seed S                seed of the portable noise generator (default 0)
  --scheduler NAME        ddim, pndm, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lcm (default: the model's own)
  --size WxH              image size in pixels (default: the model's)
  --plan FILE             run the sampler plan written by `sdrt plan ARTIFACT ... -o FILE`
                          (default: the artifact's plan for --scheduler and --steps)
  --device NAME           OpenVINO device: CPU, GPU, NPU (default CPU)
  --precision P           f32 or bf16 (default f32)
  --tokenizers-extension PATH
                          libopenvino_tokenizers (default: $SDRT_TOKENIZERS_EXTENSION, else the one found
                          when the host was built)
  --no-verify             skip the SHA-256 check of the artifact's files
  -o, --output FILE       PNG file to write (default sdrt.png)

noise prints the first N values of the seeded normal stream, one per line (for checking a port).
)";

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename T>
T parse_number(const std::string& flag, const std::string& text) {
  T value{};
  auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) {
    throw Usage(flag + " takes a number, got \"" + text + "\".");
  }
  return value;
}

std::map<std::string, std::string> parse_flags(int argc, char** argv, int first) {
  static const std::map<std::string, bool> known = {
      {"--artifact", true}, {"--prompt", true}, {"--negative", true}, {"--steps", true}, {"--guidance", true},
      {"--seed", true}, {"--scheduler", true}, {"--size", true}, {"--plan", true}, {"--device", true},
      {"--precision", true}, {"--tokenizers-extension", true}, {"--no-verify", false}, {"-o", true},
      {"--output", true}, {"--count", true}, {"--stream", true}, {"--prompt-2", true}, {"--negative-2", true},
      {"--clip-skip", true}, {"--vae", true}, {"--refiner", true}, {"--high-noise-frac", true},
      {"--original-size", true}, {"--target-size", true}, {"--crops-coords-top-left", true},
      {"--negative-original-size", true}, {"--negative-target-size", true},
      {"--negative-crops-coords-top-left", true}, {"--aesthetic-score", true}, {"--negative-aesthetic-score", true}};
  std::map<std::string, std::string> flags;
  for (int i = first; i < argc; ++i) {
    std::string flag = argv[i];
    auto it = known.find(flag);
    if (it == known.end()) throw Usage("unknown option " + flag + ".");
    if (flag == "--output") flag = "-o";
    if (!it->second) {
      flags[flag] = "1";
    } else if (i + 1 < argc) {
      flags[flag] = argv[++i];
    } else {
      throw Usage(flag + " needs a value.");
    }
  }
  return flags;
}

// "A<sep>B" as two integers, e.g. 1024x768 or 0,64.
std::array<int, 2> parse_pair(const std::string& flag, const std::string& text, const char* separators,
                              const char* example) {
  auto at = text.find_first_of(separators);
  if (at == std::string::npos) throw Usage(flag + " must look like " + example + ", got \"" + text + "\".");
  return {parse_number<int>(flag, text.substr(0, at)), parse_number<int>(flag, text.substr(at + 1))};
}

// SDXL's size conditions from WIDTHxHEIGHT sizes and TOP,LEFT crops (the library's pairs are (height, width)).
void size_conditions(const std::map<std::string, std::string>& flags, sdrt::Request& request) {
  auto size = [&](const std::string& flag, std::optional<sdrt::Pair>& into) {
    if (!flags.count(flag)) return;
    auto [w, h] = parse_pair(flag, flags.at(flag), "xX", "1024x1024 (WIDTHxHEIGHT)");
    into = sdrt::Pair{h, w};
  };
  size("--original-size", request.original_size);
  size("--target-size", request.target_size);
  size("--negative-original-size", request.negative_original_size);
  size("--negative-target-size", request.negative_target_size);
  if (flags.count("--crops-coords-top-left")) {
    request.crops_coords_top_left = parse_pair("--crops-coords-top-left", flags.at("--crops-coords-top-left"), ",",
                                               "0,0 (TOP,LEFT)");
  }
  if (flags.count("--negative-crops-coords-top-left")) {
    request.negative_crops_coords_top_left = parse_pair(
        "--negative-crops-coords-top-left", flags.at("--negative-crops-coords-top-left"), ",", "0,0 (TOP,LEFT)");
  }
  if (flags.count("--aesthetic-score")) {
    request.aesthetic_score = parse_number<float>("--aesthetic-score", flags.at("--aesthetic-score"));
  }
  if (flags.count("--negative-aesthetic-score")) {
    request.negative_aesthetic_score =
        parse_number<float>("--negative-aesthetic-score", flags.at("--negative-aesthetic-score"));
  }
}

int generate(const std::map<std::string, std::string>& flags) {
  auto get = [&](const std::string& flag, const std::string& fallback) {
    auto it = flags.find(flag);
    return it == flags.end() ? fallback : it->second;
  };
  if (!flags.count("--artifact")) throw Usage("generate needs --artifact DIR.");
  if (!flags.count("--prompt")) throw Usage("generate needs --prompt TEXT.");
  sdrt::HostOptions options;
  options.device = get("--device", "CPU");
  options.precision = get("--precision", "f32");
  options.tokenizers_extension = get("--tokenizers-extension", "");
  options.verify_checksums = !flags.count("--no-verify");
  sdrt::Request request;
  request.prompt = get("--prompt", "");
  if (flags.count("--negative")) request.negative_prompt = flags.at("--negative");
  if (flags.count("--prompt-2")) request.prompt_2 = flags.at("--prompt-2");
  if (flags.count("--negative-2")) request.negative_prompt_2 = flags.at("--negative-2");
  request.clip_skip = parse_number<int>("--clip-skip", get("--clip-skip", "0"));
  options.vae = get("--vae", "");
  request.plan_file = get("--plan", "");
  request.steps = parse_number<int>("--steps", get("--steps", request.plan_file.empty() ? "20" : "0"));
  request.guidance = parse_number<float>("--guidance", get("--guidance", "7.5"));
  request.seed = parse_number<std::uint64_t>("--seed", get("--seed", "0"));
  request.scheduler = get("--scheduler", "");
  if (flags.count("--size")) {
    std::string size = get("--size", "");
    auto x = size.find_first_of("xX");
    if (x == std::string::npos) throw Usage("--size must look like 512x512 (WIDTHxHEIGHT), got \"" + size + "\".");
    request.width = parse_number<int>("--size", size.substr(0, x));
    request.height = parse_number<int>("--size", size.substr(x + 1));
  }
  size_conditions(flags, request);
  std::string output = get("-o", "sdrt.png");
  if (flags.count("--high-noise-frac") && !flags.count("--refiner")) throw Usage("--high-noise-frac goes with --refiner.");

  sdrt::Timings t;
  double load = 0;
  auto add = [&](const sdrt::Pipeline& pipeline) {
    const sdrt::Timings& part = pipeline.last_timings();
    load += pipeline.load_seconds();
    t.text_encoder += part.text_encoder;
    t.denoising += part.denoising;
    t.steps.insert(t.steps.end(), part.steps.begin(), part.steps.end());
  };
  sdrt::Image image;
  {
    sdrt::Pipeline pipeline(get("--artifact", ""), options);
    if (!flags.count("--refiner")) {
      image = pipeline.generate(request);
      add(pipeline);
      t.vae_decoder = pipeline.last_timings().vae_decoder;
      t.total = pipeline.last_timings().total;
    } else {  // the base to --high-noise-frac, freed before the refiner opens; the refiner from there
      request.denoising_end = parse_number<double>("--high-noise-frac", get("--high-noise-frac", "0.8"));
      sdrt::Latents latents = pipeline.denoise(request);
      add(pipeline);
      t.total = pipeline.last_timings().total;
      request.latents = std::move(latents);
      request.denoising_start = request.denoising_end;
      request.denoising_end.reset();
    }
  }
  if (request.latents) {
    sdrt::Pipeline refiner(get("--refiner", ""), options);
    image = refiner.decode(refiner.denoise(request));
    add(refiner);
    t.vae_decoder = refiner.last_timings().vae_decoder;
    t.total += refiner.last_timings().total;
  }
  sdrt::write_png(output, image);
  std::printf("wrote %s (%dx%d, seed %llu)\n", output.c_str(), image.width, image.height,
              static_cast<unsigned long long>(request.seed));
  std::printf("seconds: load %.3f  text_encoder %.3f  denoising %.3f (%zu steps)  vae_decoder %.3f  total %.3f\n",
              load, t.text_encoder, t.denoising, t.steps.size(), t.vae_decoder, t.total);
  return 0;
}

int noise(const std::map<std::string, std::string>& flags) {
  if (!flags.count("--seed") || !flags.count("--count")) throw Usage("noise needs --seed S and --count N.");
  auto seed = parse_number<std::uint64_t>("--seed", flags.at("--seed"));
  auto n = parse_number<std::size_t>("--count", flags.at("--count"));
  std::uint64_t stream = flags.count("--stream") ? parse_number<std::uint64_t>("--stream", flags.at("--stream")) : 0;
  for (float value : sdrt::gaussian_noise(seed, n, stream)) std::printf("%.9g\n", static_cast<double>(value));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string command = argv[1];
  try {
    auto flags = parse_flags(argc, argv, 2);
    if (command == "generate") return generate(flags);
    if (command == "noise") return noise(flags);
    throw Usage("unknown command " + command + "; use generate or noise.");
  } catch (const Usage& error) {
    std::cerr << "sdrt-host: error: " << error.what() << "\n" << kUsage;
    return 2;
  } catch (const sdrt::Error& error) {
    std::cerr << "sdrt-host: error: " << error.what() << "\n";
    return 1;
  } catch (const std::exception& error) {
    std::cerr << "sdrt-host: error: " << error.what() << "\n";
    return 1;
  }
}
