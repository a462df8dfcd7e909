// parse_header + with_tables: never read out of bounds; a spliced stream has its tables.
#include <cstring>

#include "codec.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  int q = take_quality(data, size);
  jpeglm::HeaderInfo h;
  try {
    h = jpeglm::parse_header(data, size);
  } catch (const jpeglm::JpegError&) {
    // with_tables must refuse the same input.
    bool threw = false;
    try {
      jpeglm::with_tables(data, size, q);
    } catch (const jpeglm::JpegError&) {
      threw = true;
    }
    FUZZ_CHECK(threw);
    return 0;
  }
  FUZZ_CHECK(h.scan_offset >= 4 && h.scan_offset <= size);
  std::vector<uint8_t> full = jpeglm::with_tables(data, size, q);
  if (h.has_dqt) {
    FUZZ_CHECK(full.size() == size && std::memcmp(full.data(), data, size) == 0);
    return 0;
  }
  const auto& t = jpeglm::tables_stream(q);
  FUZZ_CHECK(full.size() == size + t.size() - 4);
  jpeglm::HeaderInfo h2 = jpeglm::parse_header(full.data(), full.size());
  FUZZ_CHECK(h2.has_dqt && h2.has_dht);
  FUZZ_CHECK(h2.width == h.width && h2.height == h.height);
  FUZZ_CHECK(h2.restart_interval == h.restart_interval);
  FUZZ_CHECK(h2.scan_offset == h.scan_offset + t.size() - 4);
  return 0;
}
