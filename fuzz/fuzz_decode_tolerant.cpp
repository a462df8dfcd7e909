// Tolerant decode: never throws for fallback_size > 0; always returns a consistent result.
#include <string>

#include "codec.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  int q = take_quality(data, size);
  const int fallback = 16 * (1 + (q % 4));  // 16..64
  jpeglm::DecodeResult r;
  try {
    r = jpeglm::decode_tolerant(data, size, q, fallback);
  } catch (const jpeglm::JpegError& e) {
    // Only allocation failure may throw with a positive fallback size.
    FUZZ_CHECK(std::string(e.what()).find("out of memory") != std::string::npos);
    return 0;
  }
  FUZZ_CHECK(r.width > 0 && r.height > 0 && r.pixels);
  FUZZ_CHECK(r.valid_mcus >= 0 && r.valid_mcus <= r.total_mcus);
  FUZZ_CHECK(!r.clean || r.valid_mcus == r.total_mcus);
  volatile uint8_t sink = 0;
  const std::size_t n = std::size_t(r.width) * r.height * 3;
  for (std::size_t i = 0; i < n; i += 64) sink ^= r.pixels[i];
  sink ^= r.pixels[n - 1];
  // The strict decoder never accepts what the tolerant one calls damaged... the converse is
  // not required (libjpeg tolerates some padding/marker irregularities the validator rejects).
  return 0;
}
