// Portable seeded Gaussian noise: Philox4x32-10 + Box-Muller, as runtime/noise.py documents it
// (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11; constants as in Random123).
#include <array>
#include <cmath>
#include <cstdint>

#include "sdrt/host.hpp"

namespace sdrt {

namespace {

using Block = std::array<std::uint32_t, 4>;

Block philox4x32_10(Block counter, std::uint32_t k0, std::uint32_t k1) {
  constexpr std::uint64_t kM0 = 0xD2511F53, kM1 = 0xCD9E8D57;
  constexpr std::uint32_t kW0 = 0x9E3779B9, kW1 = 0xBB67AE85;
  for (int round = 0; round < 10; ++round) {
    std::uint64_t p0 = kM0 * counter[0];
    std::uint64_t p1 = kM1 * counter[2];
    auto hi0 = static_cast<std::uint32_t>(p0 >> 32), lo0 = static_cast<std::uint32_t>(p0);
    auto hi1 = static_cast<std::uint32_t>(p1 >> 32), lo1 = static_cast<std::uint32_t>(p1);
    counter = {hi1 ^ counter[1] ^ k0, lo1, hi0 ^ counter[3] ^ k1, lo0};
    k0 += kW0;
    k1 += kW1;
  }
  return counter;
}

}  // namespace

std::vector<float> gaussian_noise(std::uint64_t seed, std::size_t count, std::uint64_t stream) {
  constexpr double kTwoPi = 6.283185307179586;  // 2 * numpy.pi
  constexpr double kScale = 1.0 / 4294967296.0;  // 2^-32
  std::vector<float> out;
  out.reserve(count + 3);
  auto k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
  for (std::uint64_t block = 0; out.size() < count; ++block) {
    Block words = philox4x32_10({static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32),
                                 static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)},
                                k0, k1);
    for (int pair = 0; pair < 2; ++pair) {
      double u1 = (static_cast<double>(words[2 * pair]) + 1.0) * kScale;
      double u2 = static_cast<double>(words[2 * pair + 1]) * kScale;
      double radius = std::sqrt(-2.0 * std::log(u1));
      double angle = kTwoPi * u2;
      out.push_back(static_cast<float>(radius * std::cos(angle)));
      out.push_back(static_cast<float>(radius * std::sin(angle)));
    }
  }
  out.resize(count);
  return out;
}

}  // namespace sdrt
