// mcu_validity: one flag per MCU or JpegError; a strictly decodable canonical stream is all valid.
#include "codec.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  int q = take_quality(data, size);
  try {
    std::vector<uint8_t> v = jpeglm::mcu_validity(data, size, q);
    for (uint8_t f : v) FUZZ_CHECK(f <= 1);
  } catch (const jpeglm::JpegError&) {
  }
  return 0;
}
