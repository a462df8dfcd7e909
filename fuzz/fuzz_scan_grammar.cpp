// ScanGrammar: feed / step / allowed_bytes on fuzzer-chosen bytes.
//
// Input: byte 0 picks the image size (16 or 32), where to start (SOI or the scan) and the mode:
// raw (every later byte is fed as is) or guided (every later byte picks one of the currently
// allowed bytes, so deep states and complete streams are reached). Checked at every step:
// allowed_bytes agrees with step; feed agrees with step by step. A stream the automaton
// accepts completely from SOI must decode strictly and have every MCU valid. (Past byte 64
// of a raw walk allowed_bytes is checked on every 16th byte only: it costs 256 steps.)
#include <memory>
#include <vector>

#include "codec.h"
#include "fuzz_common.h"
#include "fuzz_grammar.h"
#include "scan_automaton.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  ++data;
  --size;
  const jpeglm::ScanGrammar& g = fuzz_grammar(mode & 1);
  const bool at_scan = mode & 2;
  const bool guided = mode & 4;
  jpeglm::ScanState s = g.initial(at_scan);
  std::vector<uint8_t> fed = at_scan ? g.header() : std::vector<uint8_t>();
  uint8_t allowed[256];

  // Whole-buffer feed must agree with the step-by-step walk below (raw mode).
  jpeglm::ScanState fs = s;
  const std::ptrdiff_t bad = guided ? -2 : g.feed(fs, data, size);

  std::ptrdiff_t first_reject = -1;
  for (std::size_t i = 0; i < size; ++i) {
    // allowed_bytes costs 256 steps: check it on every step early on, then on a sample (raw).
    // A guided walk through the fixed header has one choice per byte: take it directly.
    if (guided && s.phase == jpeglm::ScanPhase::kHeader && s.header_pos > 8) {
      const uint8_t b = g.header()[s.header_pos];
      FUZZ_CHECK(g.step(s, b));
      fed.push_back(b);
      continue;
    }
    if (!guided && i >= 64 && i % 16 != 0) {
      if (!g.step(s, data[i])) {
        first_reject = static_cast<std::ptrdiff_t>(i);
        break;
      }
      fed.push_back(data[i]);
      continue;
    }
    g.allowed_bytes(s, allowed);
    int count = 0;
    for (int b = 0; b < 256; ++b) count += allowed[b];
    if (s.phase == jpeglm::ScanPhase::kDone || s.phase == jpeglm::ScanPhase::kReject)
      FUZZ_CHECK(count == 0);
    uint8_t byte = data[i];
    if (guided) {
      if (count == 0) break;
      int pick = data[i] % count;
      for (int b = 0; b < 256; ++b)
        if (allowed[b] && pick-- == 0) {
          byte = static_cast<uint8_t>(b);
          break;
        }
    }
    const bool ok = g.step(s, byte);
    FUZZ_CHECK(ok == (allowed[byte] != 0));
    if (!ok) {
      FUZZ_CHECK(s.phase == jpeglm::ScanPhase::kReject);
      first_reject = static_cast<std::ptrdiff_t>(i);
      break;
    }
    FUZZ_CHECK(s.mcu < static_cast<uint32_t>(g.total_mcus()));
    fed.push_back(byte);
  }
  if (!guided) {
    FUZZ_CHECK(bad == first_reject);
    if (bad < 0) FUZZ_CHECK(fs == s);
  }
  if (s.phase == jpeglm::ScanPhase::kDone) {
    // A complete stream (the fixed header is the canonical q25 stripped header).
    FUZZ_CHECK(fed.size() >= g.header().size());
    try {
      jpeglm::DecodeResult r = jpeglm::decode(fed.data(), fed.size(), 25);
      FUZZ_CHECK(r.width == g.width() && r.height == g.height());
    } catch (const jpeglm::JpegError& e) {
      std::fprintf(stderr, "accepted stream does not decode: %s\n", e.what());
      FUZZ_CHECK(false);
    }
    std::vector<uint8_t> v = jpeglm::mcu_validity(fed.data(), fed.size(), 25);
    FUZZ_CHECK(static_cast<int>(v.size()) == g.total_mcus());
    for (uint8_t f : v) FUZZ_CHECK(f == 1);
  }
  return 0;
}
