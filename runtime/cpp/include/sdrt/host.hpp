// sdrt C++ host: text-to-image from an sdrt artifact folder with the OpenVINO C++ API.
//
// The host reads only the artifact's manifest (sdrt.json) and the files it names: the ONNX
// text encoders, UNet and VAE decoder, the OpenVINO tokenizer models and the sampler plans. It
// runs every family the manifest describes as data (SD 1.x/2.x, SDXL base and refiner, Turbo,
// latent consistency models; docs/artifact.md section 2b), and the SDXL base -> refiner hand-off
// (diffusers' ensemble of experts: denoise() on the base with denoising_end, then on the refiner
// with denoising_start and the base's latents).
// Seeds drive the same portable generator as sdrt's Python runtime (Philox4x32-10 +
// Box-Muller), so one seed gives the same image in Python and C++.
//
//     sdrt::Pipeline pipe("sd15-onnx");
//     sdrt::Request request;
//     request.prompt = "a castle on a hill";
//     request.steps = 20;
//     request.seed = 42;
//     sdrt::write_png("castle.png", pipe.generate(request));
//
// Every failure (a bad artifact, a bad request, an OpenVINO error) throws sdrt::Error with a
// message that says what to do.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace sdrt {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct HostOptions {
  std::string device = "CPU";       // an OpenVINO device name: CPU, GPU, NPU
  std::string precision = "f32";    // OpenVINO's INFERENCE_PRECISION_HINT: f32 or bf16
  std::string tokenizers_extension; // libopenvino_tokenizers; empty: $SDRT_TOKENIZERS_EXTENSION, else the build's
  bool verify_checksums = true;     // check every file's SHA-256 against the manifest when opening
  std::string vae;                  // a VAE added to the artifact under this name (e.g. taesd); empty: its own
};

// Latents as the denoiser leaves them ([1, channels, height / f, width / f], row-major).
struct Latents {
  std::vector<std::size_t> shape;
  std::vector<float> values;
};

// A (height, width) size or a (top, left) offset in pixels, as diffusers' SDXL keywords.
using Pair = std::array<int, 2>;

struct Request {
  std::string prompt;
  // none: no negative prompt (an SDXL base then guides against zero embeddings, as diffusers);
  // otherwise encoded, "" included
  std::optional<std::string> negative_prompt;
  std::optional<std::string> prompt_2, negative_prompt_2;  // SDXL's second text encoder (default: the first's)
  int clip_skip = 0;           // condition on this many layers before the model's own (diffusers' clip_skip)
  int steps = 20;               // with plan_file: 0 takes the plan's step count
  float guidance = 7.5f;       // classifier-free guidance; <= 1 runs the UNet without the negative branch
  std::uint64_t seed = 0;
  std::string scheduler;       // ddim, pndm, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, lcm; empty: the model's own
  int width = 0, height = 0;   // pixels; 0: the model's default size
  std::string plan_file;       // a plan written by `sdrt plan ... -o FILE`; empty: the artifact's stored plans
  // SDXL's size conditions: sizes unset are the image's; the negative ones as docs/families.md says
  // (none given: the unconditional half repeats the positive ones); aesthetic scores: the refiner's.
  std::optional<Pair> original_size, target_size, negative_original_size, negative_target_size;
  Pair crops_coords_top_left{0, 0};
  std::optional<Pair> negative_crops_coords_top_left;
  float aesthetic_score = 6.0f, negative_aesthetic_score = 2.5f;
  // The hand-off (fractions of the schedule in (0, 1)): denoising_end stops after the steps whose
  // timestep is at or above the cutoff; denoising_start runs the rest from `latents` as they are,
  // with the artifact's hand-off plan (`sdrt export` stores 0.8 for SDXL; `sdrt plan
  // --denoising-start F` adds others). The size defaults to the latents'.
  std::optional<double> denoising_end, denoising_start;
  std::optional<Latents> latents;
};

struct Image {
  int width = 0, height = 0;
  std::vector<std::uint8_t> rgb;  // height * width * 3 bytes, row by row
};

struct Timings {
  double text_encoder = 0, denoising = 0, vae_decoder = 0, total = 0;  // seconds
  std::vector<double> steps;
};

// on_step(step_index, step_count) after every denoising step
using StepCallback = std::function<void(int, int)>;

class Pipeline {
 public:
  // Opens the artifact: checks the manifest (format, schema version) and every file it lists
  // (present, size, SHA-256), then compiles the networks on the device.
  explicit Pipeline(const std::string& artifact_folder, const HostOptions& options = {});
  ~Pipeline();
  Pipeline(Pipeline&&) noexcept;
  Pipeline& operator=(Pipeline&&) noexcept;

  // denoise() then decode().
  Image generate(const Request& request, const StepCallback& on_step = {});
  // The latents after the request's plan (to denoising_end, when set), not decoded.
  Latents denoise(const Request& request, const StepCallback& on_step = {});
  // Pixels of latents with this artifact's VAE decoder (the one HostOptions::vae chose).
  Image decode(const Latents& latents);
  const Timings& last_timings() const;
  double load_seconds() const;
  std::string default_scheduler() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Standard-normal float32 noise: the first `count` values of stream `stream` for `seed`,
// equal to sdrt.runtime.noise.gaussian_noise (stream 0: initial latents; 1 + k: step k's noise).
std::vector<float> gaussian_noise(std::uint64_t seed, std::size_t count, std::uint64_t stream);

// An 8-bit RGB PNG (uncompressed deflate blocks; no library needed).
void write_png(const std::string& path, const Image& image);

// Hex SHA-256 of a file, as the manifest records it.
std::string sha256_file(const std::string& path);

}  // namespace sdrt
