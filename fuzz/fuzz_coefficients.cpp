// read_coefficients: arrays sized as the header says, or JpegError.
#include "codec.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  int q = take_quality(data, size);
  try {
    auto comps = jpeglm::read_coefficients(data, size, q);
    FUZZ_CHECK(!comps.empty());
    for (const auto& c : comps) {
      FUZZ_CHECK(c.coefs.size() == std::size_t(c.blocks_high) * c.blocks_wide * 64);
      FUZZ_CHECK(c.h_samp >= 1 && c.v_samp >= 1);
    }
  } catch (const jpeglm::JpegError&) {
  }
  return 0;
}
