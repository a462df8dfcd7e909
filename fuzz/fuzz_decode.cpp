// Strict decode: jpeglm::decode on arbitrary bytes must return an image or throw JpegError.
#include <cstring>

#include "codec.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  int q = take_quality(data, size);
  try {
    jpeglm::DecodeResult r = jpeglm::decode(data, size, q);
    FUZZ_CHECK(r.width > 0 && r.height > 0 && r.pixels);
    FUZZ_CHECK(std::size_t(r.width) * r.height <= jpeglm::kMaxPixels);
    // Touch every output byte: an uninitialised or short buffer shows up under ASan/MSan.
    volatile uint8_t sink = 0;
    const std::size_t n = std::size_t(r.width) * r.height * 3;
    for (std::size_t i = 0; i < n; i += 64) sink ^= r.pixels[i];
    sink ^= r.pixels[n - 1];
    FUZZ_CHECK(r.valid_mcus == r.total_mcus);
  } catch (const jpeglm::JpegError&) {
  }
  return 0;
}
