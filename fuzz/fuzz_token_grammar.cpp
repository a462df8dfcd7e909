// TokenGrammar: mask / advance over a fuzzer-chosen vocabulary and token ids.
//
// Input: byte 0: flags (size 16/32, start at SOI or scan, include the 256 single bytes, guided);
// byte 1: number of extra tokens (0..31), each a length byte (0..15; 0 = a special token) and
// its bytes; then one byte per step picking a token id (guided: among the allowed ones).
// Checked: mask[id] == advance(copy, id) for every id (EOS included), at every step for the
// first 32 steps, then every 8th.
#include <string>
#include <vector>

#include "fuzz_common.h"
#include "fuzz_grammar.h"
#include "scan_automaton.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const uint8_t flags = data[0];
  std::size_t n_extra = data[1] % 32;
  std::size_t i = 2;
  const jpeglm::ScanGrammar& g = fuzz_grammar(flags & 1);
  const bool at_scan = flags & 2, singles = flags & 4, guided = flags & 8;

  std::vector<std::string> tokens;
  if (singles)
    for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
  tokens.emplace_back();  // EOS
  const int eos = static_cast<int>(tokens.size()) - 1;
  for (std::size_t t = 0; t < n_extra && i < size; ++t) {
    std::size_t len = data[i++] % 16;
    std::string tok;
    for (std::size_t k = 0; k < len && i < size; ++k) tok.push_back(static_cast<char>(data[i++]));
    tokens.push_back(tok);
  }
  // An id past the vocabulary and a negative one must be refused.
  const int eos_id = (flags & 16) ? eos : (flags & 32 ? -1 : static_cast<int>(tokens.size()));
  jpeglm::TokenGrammar tg(g, tokens, eos_id);
  const int v = tg.vocab_size();
  FUZZ_CHECK(v == static_cast<int>(tokens.size()));

  jpeglm::ScanState s = g.initial(at_scan);
  std::vector<uint8_t> mask(static_cast<std::size_t>(v));
  for (std::size_t step = 0; i < size; ++i, ++step) {
    tg.mask(s, mask.data());
    int allowed = 0;
    // Advancing by every id costs a vocabulary of walks: every step early on, then a sample.
    const bool full = step < 32 || step % 8 == 0;
    for (int id = 0; id < v; ++id) {
      allowed += mask[id];
      if (!full) continue;
      jpeglm::ScanState t = s;
      const bool ok = tg.advance(t, id);
      FUZZ_CHECK(ok == (mask[id] != 0));
      if (!ok) FUZZ_CHECK(t.phase == jpeglm::ScanPhase::kReject);
    }
    if (s.phase == jpeglm::ScanPhase::kDone)
      FUZZ_CHECK(allowed == (eos_id >= 0 && eos_id < v ? 1 : 0));
    {
      jpeglm::ScanState t = s;
      FUZZ_CHECK(!tg.advance(t, -1) && !tg.advance(t, v));
    }
    int id = data[i] % (v + 1);  // v: out of range
    if (guided && allowed) {
      int pick = data[i] % allowed;
      for (int k = 0; k < v; ++k)
        if (mask[k] && pick-- == 0) {
          id = k;
          break;
        }
    }
    if (!tg.advance(s, id)) break;
  }
  return 0;
}
