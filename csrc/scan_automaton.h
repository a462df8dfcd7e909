// The canonical JPEG-LM scan as a byte automaton, and BPE token masks over it.
//
// Grammar (see docs: scan-grammar): SOI + the fixed header for the image size, then for every
// MCU six Huffman-coded blocks (Y00 Y01 Y10 Y11 Cb Cr; standard tables; DC category, AC
// (run, size) symbols, ZRL, EOB), padding 1-bits to a byte boundary, byte stuffing (FF -> FF 00),
// RSTn (n = MCU index mod 8) after every MCU but the last, and EOI after the last.
// A state is a small POD: copying it is the way to branch. Pure algorithm, no Python.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace jpeglm {

enum class ScanPhase : uint8_t {
  kHeader = 0,      // inside the fixed header
  kScan = 1,        // inside an MCU's entropy-coded bits
  kMarkerFF = 2,    // MCU done (byte-aligned): the FF of RSTn / EOI comes next
  kMarkerCode = 3,  // the marker code byte comes next
  kDone = 4,        // EOI seen: nothing more
  kReject = 5,      // an illegal byte was seen
};

struct ScanState {
  uint32_t mcu = 0;         // MCU being decoded (or just completed, in the marker phases)
  uint16_t header_pos = 0;  // bytes of the header consumed (phase kHeader)
  ScanPhase phase = ScanPhase::kHeader;
  uint8_t block = 0;        // 0..5 within the MCU
  uint8_t k = 0;            // next coefficient position (0 = DC)
  uint8_t extra = 0;        // magnitude bits still owed for the last symbol
  uint8_t stuff = 0;        // 1: the previous byte was a data FF, a 00 must follow
  int16_t node = 0;         // position in the current Huffman code tree (0 = root)

  bool operator==(const ScanState& o) const {
    return mcu == o.mcu && header_pos == o.header_pos && phase == o.phase && block == o.block &&
           k == o.k && extra == o.extra && stuff == o.stuff && node == o.node;
  }
};

class ScanGrammar {
 public:
  // The canonical 4:2:0 stream of a `width` x `height` image: positive multiples of 16
  // (std::invalid_argument otherwise), at most kMaxSize (jpeg_tables.h; JpegError otherwise).
  ScanGrammar(int width, int height);

  int width() const { return width_; }
  int height() const { return height_; }
  int total_mcus() const { return total_mcus_; }
  const std::vector<uint8_t>& header() const { return header_; }

  // A fresh state: before SOI (at_scan = false) or right after the header (at_scan = true).
  ScanState initial(bool at_scan = false) const;

  // Feed one byte; returns false (and sets phase kReject) when it is illegal.
  bool step(ScanState& s, uint8_t byte) const;
  // Feed bytes; returns the index of the first rejected byte, or -1 when all were accepted.
  std::ptrdiff_t feed(ScanState& s, const uint8_t* data, std::size_t n) const;
  // allowed[b] = 1 when byte b is legal next.
  void allowed_bytes(const ScanState& s, uint8_t* allowed) const;

 private:
  struct Tree {
    // child[2*node + bit]: >= 0 another internal node, -1 no code, <= -2 leaf (symbol -v-2)
    std::vector<int16_t> child;
    // Per internal node, what its subtree can still produce (AC trees): a symbol with a size is
    // legal at position k only if k + run <= 63, ZRL only if k + 16 <= 64, EOB always. A
    // partial code is live only if some symbol below it is legal at the current k.
    std::vector<uint8_t> has_eob, has_zrl, min_run;  // min_run: over symbols with size > 0
    bool live(int node, int k, bool dc) const {
      if (dc) return true;
      return has_eob[node] || (has_zrl[node] && k + 16 <= 64) || (min_run[node] + k <= 63);
    }
  };
  const Tree& tree(const ScanState& s) const;
  bool step_bit(ScanState& s, int bit, bool* mcu_done) const;
  void finish_coefficient(ScanState& s, bool* mcu_done) const;

  int width_, height_, total_mcus_;
  std::vector<uint8_t> header_;
  std::array<Tree, 4> trees_;  // DC luma, AC luma, DC chroma, AC chroma
};

// Token masks: which token ids may come next, given a vocabulary of byte strings.
class TokenGrammar {
 public:
  static constexpr std::size_t kMaxTokenBytes = 4096;
  // tokens[i] = the bytes of token i ("" for special tokens). eos_id: allowed only once the
  // stream is complete (and then it is the only token allowed); other empty tokens never.
  TokenGrammar(const ScanGrammar& grammar, const std::vector<std::string>& tokens, int eos_id);

  const ScanGrammar& grammar() const { return grammar_; }
  int vocab_size() const { return static_cast<int>(tokens_.size()); }
  // mask[i] = 1 when token i is allowed from state s (walks a trie of the vocabulary).
  void mask(const ScanState& s, uint8_t* mask) const;
  // Advance by one token; false when it is not allowed (state then kReject).
  bool advance(ScanState& s, int token) const;

 private:
  struct TrieNode {
    std::vector<std::pair<uint8_t, int32_t>> children;  // (byte, node)
    std::vector<int32_t> ends;                          // token ids ending here
  };
  void walk(const ScanState& s, int32_t node, uint8_t* mask) const;

  ScanGrammar grammar_;
  std::vector<std::string> tokens_;
  int eos_id_;
  std::vector<TrieNode> trie_;
};

}  // namespace jpeglm
