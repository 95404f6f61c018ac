// An 8-bit RGB PNG writer with no library: zlib stream of stored (uncompressed) deflate blocks
// (RFC 1950/1951), CRC-32 per chunk (PNG spec, ISO/IEC 15948 annex D).
#include <array>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "sdrt/host.hpp"

namespace sdrt {

namespace {

std::uint32_t crc32(const std::vector<unsigned char>& data, std::size_t begin) {
  static const std::array<std::uint32_t, 256> table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t n = 0; n < 256; ++n) {
      std::uint32_t c = n;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[n] = c;
    }
    return t;
  }();
  std::uint32_t c = 0xFFFFFFFFu;
  for (std::size_t i = begin; i < data.size(); ++i) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

void put32(std::vector<unsigned char>& out, std::uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<unsigned char>(value >> shift));
}

void chunk(std::vector<unsigned char>& png, const char* type, const std::vector<unsigned char>& body) {
  put32(png, static_cast<std::uint32_t>(body.size()));
  std::size_t start = png.size();
  png.insert(png.end(), type, type + 4);
  png.insert(png.end(), body.begin(), body.end());
  put32(png, crc32(png, start));
}

}  // namespace

void write_png(const std::string& path, const Image& image) {
  if (image.width <= 0 || image.height <= 0 ||
      image.rgb.size() != static_cast<std::size_t>(image.width) * static_cast<std::size_t>(image.height) * 3) {
    throw Error("write_png: the image's rgb buffer must hold width * height * 3 bytes.");
  }
  // Scanlines, each with filter type 0 (none).
  std::vector<unsigned char> raw;
  std::size_t row = static_cast<std::size_t>(image.width) * 3;
  raw.reserve((row + 1) * static_cast<std::size_t>(image.height));
  for (int y = 0; y < image.height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), image.rgb.begin() + static_cast<std::ptrdiff_t>(row * y),
               image.rgb.begin() + static_cast<std::ptrdiff_t>(row * (y + 1)));
  }
  std::vector<unsigned char> zlib = {0x78, 0x01};
  std::uint32_t a = 1, b = 0;  // Adler-32
  for (unsigned char byte : raw) {
    a = (a + byte) % 65521;
    b = (b + a) % 65521;
  }
  for (std::size_t offset = 0; offset < raw.size() || offset == 0; offset += 65535) {
    std::size_t size = std::min<std::size_t>(65535, raw.size() - offset);
    bool last = offset + size >= raw.size();
    zlib.push_back(last ? 1 : 0);
    zlib.push_back(static_cast<unsigned char>(size));
    zlib.push_back(static_cast<unsigned char>(size >> 8));
    zlib.push_back(static_cast<unsigned char>(~size));
    zlib.push_back(static_cast<unsigned char>(~size >> 8));
    zlib.insert(zlib.end(), raw.begin() + static_cast<std::ptrdiff_t>(offset),
                raw.begin() + static_cast<std::ptrdiff_t>(offset + size));
    if (last) break;
  }
  put32(zlib, (b << 16) | a);

  std::vector<unsigned char> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  std::vector<unsigned char> header;
  put32(header, static_cast<std::uint32_t>(image.width));
  put32(header, static_cast<std::uint32_t>(image.height));
  header.insert(header.end(), {8, 2, 0, 0, 0});  // 8-bit, RGB, deflate, adaptive filtering, no interlace
  chunk(png, "IHDR", header);
  chunk(png, "IDAT", zlib);
  chunk(png, "IEND", {});

  // Written beside the target and renamed, so a failure leaves no half-written image.
  std::string partial = path + ".partial";
  {
    std::ofstream file(partial, std::ios::binary);
    file.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
    if (!file) {
      std::remove(partial.c_str());
      throw Error("Cannot write " + path + "; check that its folder exists and is writable.");
    }
  }
  if (std::rename(partial.c_str(), path.c_str()) != 0) {
    std::remove(partial.c_str());
    throw Error("Cannot write " + path + "; check that its folder exists and is writable.");
  }
}

}  // namespace sdrt
