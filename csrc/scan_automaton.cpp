#include "scan_automaton.h"

#include <algorithm>
#include <stdexcept>

#include "codec.h"
#include "jpeg_tables.h"

namespace jpeglm {

ScanGrammar::ScanGrammar(int width, int height) : width_(width), height_(height) {
  if (width <= 0 || height <= 0 || width % kMcuSize || height % kMcuSize)
    throw std::invalid_argument("scan grammar: width and height must be positive multiples of 16");
  if (width > kMaxSize || height > kMaxSize)
    throw JpegError("scan grammar: size " + std::to_string(width) + "x" + std::to_string(height) +
                    " too large: exceeds JPEG's limit of " + std::to_string(kMaxSize) +
                    " per side");
  total_mcus_ = (width / 16) * (height / 16);
  // The fixed header: what the canonical encoder writes before the first MCU. It depends only
  // on the size, so take it from the encoding of a grey image (one row, repeated: stride 0).
  std::vector<uint8_t> row(std::size_t(width) * 3, 128);
  std::vector<uint8_t> stream = encode_rgb(row.data(), width, height, 0, 25, true, 1);
  HeaderInfo h = parse_header(stream.data(), stream.size());
  header_.assign(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(h.scan_offset));

  const HuffmanSpec* specs[4] = {&kStdDcLuma, &kStdAcLuma, &kStdDcChroma, &kStdAcChroma};
  for (int t = 0; t < 4; ++t) {
    Tree& tr = trees_[t];
    tr.child.assign(2, -1);  // the root
    int code = 0, k = 0;
    for (int len = 1; len <= 16; ++len) {
      for (int i = 0; i < specs[t]->bits[len - 1]; ++i, ++code, ++k) {
        int node = 0;
        for (int b = len - 1; b >= 1; --b) {  // walk/create internal nodes for the prefix
          int bit = (code >> b) & 1;
          int16_t c = tr.child[2 * node + bit];
          if (c == -1) {  // (no reference into child across the push_backs: they reallocate)
            c = static_cast<int16_t>(tr.child.size() / 2);
            tr.child[2 * node + bit] = c;
            tr.child.push_back(-1);
            tr.child.push_back(-1);
          }
          node = c;
        }
        tr.child[2 * node + (code & 1)] = static_cast<int16_t>(-2 - specs[t]->vals[k]);
      }
      code <<= 1;
    }
    // Subtree summaries, children before parents (a child's index is always larger).
    const std::size_t n = tr.child.size() / 2;
    tr.has_eob.assign(n, 0);
    tr.has_zrl.assign(n, 0);
    tr.min_run.assign(n, 255);
    for (std::size_t node = n; node-- > 0;) {
      for (int bit = 0; bit < 2; ++bit) {
        int16_t c = tr.child[2 * node + bit];
        if (c >= 0) {
          tr.has_eob[node] |= tr.has_eob[c];
          tr.has_zrl[node] |= tr.has_zrl[c];
          tr.min_run[node] = std::min(tr.min_run[node], tr.min_run[c]);
        } else if (c <= -2) {
          int sym = -c - 2;
          if (sym == 0x00) tr.has_eob[node] = 1;
          else if (sym == 0xF0) tr.has_zrl[node] = 1;
          else if (sym & 15) tr.min_run[node] = std::min<uint8_t>(tr.min_run[node], sym >> 4);
        }
      }
    }
  }
}

ScanState ScanGrammar::initial(bool at_scan) const {
  ScanState s;
  if (at_scan) {
    s.phase = ScanPhase::kScan;
    s.header_pos = static_cast<uint16_t>(header_.size());
  }
  return s;
}

const ScanGrammar::Tree& ScanGrammar::tree(const ScanState& s) const {
  int t = (s.block < 4 ? 0 : 2) + (s.k == 0 ? 0 : 1);
  return trees_[t];
}

void ScanGrammar::finish_coefficient(ScanState& s, bool* mcu_done) const {
  // Called when a symbol and its magnitude bits are complete.
  if (s.k >= 64) {  // the block is full
    s.k = 0;
    if (++s.block == 6) *mcu_done = true;
  }
}

bool ScanGrammar::step_bit(ScanState& s, int bit, bool* mcu_done) const {
  if (s.extra > 0) {
    if (--s.extra == 0) finish_coefficient(s, mcu_done);
    return true;
  }
  const Tree& tr = tree(s);
  int16_t c = tr.child[2 * s.node + bit];
  if (c == -1) return false;  // a prefix of no code
  if (c >= 0) {
    if (!tr.live(c, s.k, s.k == 0)) return false;  // every code below is illegal here
    s.node = c;
    return true;
  }
  int sym = -c - 2;
  s.node = 0;
  if (s.k == 0) {  // DC: category, then that many bits
    s.k = 1;
    s.extra = static_cast<uint8_t>(sym);
    if (s.extra == 0) finish_coefficient(s, mcu_done);
    return true;
  }
  int r = sym >> 4, sz = sym & 15;
  if (sz == 0) {
    if (r == 0) {  // EOB
      s.k = 64;
      finish_coefficient(s, mcu_done);
      return true;
    }
    if (r != 15 || s.k + 16 > 64) return false;  // ZRL must fit
    s.k = static_cast<uint8_t>(s.k + 16);
    finish_coefficient(s, mcu_done);
    return true;
  }
  if (s.k + r > 63) return false;  // would run past the last coefficient
  s.k = static_cast<uint8_t>(s.k + r + 1);
  s.extra = static_cast<uint8_t>(sz);
  return true;
}

bool ScanGrammar::step(ScanState& s, uint8_t byte) const {
  switch (s.phase) {
    case ScanPhase::kHeader:
      if (byte != header_[s.header_pos]) break;
      if (++s.header_pos == header_.size()) s.phase = ScanPhase::kScan;
      return true;
    case ScanPhase::kScan: {
      if (s.stuff) {
        if (byte != 0x00) break;
        s.stuff = 0;
        return true;
      }
      bool mcu_done = false;
      for (int i = 7; i >= 0; --i) {
        int bit = (byte >> i) & 1;
        if (mcu_done) {
          if (!bit) goto reject;  // padding must be 1-bits
          continue;
        }
        if (!step_bit(s, bit, &mcu_done)) goto reject;
      }
      if (byte == 0xFF) s.stuff = 1;
      if (mcu_done) {
        s.block = 0;
        s.k = 0;
        s.node = 0;
        s.phase = ScanPhase::kMarkerFF;  // (after the stuffed 00, if one is owed)
      }
      return true;
    }
    case ScanPhase::kMarkerFF:
      if (s.stuff) {
        if (byte != 0x00) break;
        s.stuff = 0;
        return true;
      }
      if (byte != 0xFF) break;
      s.phase = ScanPhase::kMarkerCode;
      return true;
    case ScanPhase::kMarkerCode: {
      bool last = s.mcu + 1 == static_cast<uint32_t>(total_mcus_);
      if (last) {
        if (byte != 0xD9) break;
        s.phase = ScanPhase::kDone;
        return true;
      }
      if (byte != 0xD0 + (s.mcu & 7)) break;
      ++s.mcu;
      s.phase = ScanPhase::kScan;
      return true;
    }
    case ScanPhase::kDone:
    case ScanPhase::kReject:
      break;
  }
reject:
  s.phase = ScanPhase::kReject;
  return false;
}

std::ptrdiff_t ScanGrammar::feed(ScanState& s, const uint8_t* data, std::size_t n) const {
  for (std::size_t i = 0; i < n; ++i)
    if (!step(s, data[i])) return static_cast<std::ptrdiff_t>(i);
  return -1;
}

void ScanGrammar::allowed_bytes(const ScanState& s, uint8_t* allowed) const {
  for (int b = 0; b < 256; ++b) {
    ScanState t = s;
    allowed[b] = step(t, static_cast<uint8_t>(b)) ? 1 : 0;
  }
}

// ---------------------------------------------------------------------------------------------

TokenGrammar::TokenGrammar(const ScanGrammar& grammar, const std::vector<std::string>& tokens,
                           int eos_id)
    : grammar_(grammar), tokens_(tokens), eos_id_(eos_id) {
  trie_.emplace_back();
  for (std::size_t id = 0; id < tokens_.size(); ++id) {
    const std::string& t = tokens_[id];
    // walk() recurses once per byte of a token: bound the depth (BPE tokens are short).
    if (t.size() > kMaxTokenBytes)
      throw std::invalid_argument("token " + std::to_string(id) + " is longer than " +
                                  std::to_string(kMaxTokenBytes) + " bytes");
    if (t.empty()) continue;  // special tokens
    int32_t node = 0;
    for (unsigned char c : t) {
      int32_t next = -1;
      for (auto& [b, n] : trie_[node].children)
        if (b == c) next = n;
      if (next == -1) {
        next = static_cast<int32_t>(trie_.size());
        trie_[node].children.emplace_back(c, next);
        trie_.emplace_back();
      }
      node = next;
    }
    trie_[node].ends.push_back(static_cast<int32_t>(id));
  }
}

void TokenGrammar::walk(const ScanState& s, int32_t node, uint8_t* mask) const {
  for (const auto& [b, child] : trie_[node].children) {
    ScanState t = s;
    if (!grammar_.step(t, b)) continue;
    for (int32_t id : trie_[child].ends) mask[id] = 1;
    if (!trie_[child].children.empty()) walk(t, child, mask);
  }
}

void TokenGrammar::mask(const ScanState& s, uint8_t* mask) const {
  std::fill(mask, mask + tokens_.size(), 0);
  if (s.phase == ScanPhase::kDone) {
    if (eos_id_ >= 0 && eos_id_ < static_cast<int>(tokens_.size())) mask[eos_id_] = 1;
    return;
  }
  if (s.phase == ScanPhase::kReject) return;
  walk(s, 0, mask);
}

bool TokenGrammar::advance(ScanState& s, int token) const {
  if (token < 0 || token >= static_cast<int>(tokens_.size())) {
    s.phase = ScanPhase::kReject;
    return false;
  }
  const std::string& t = tokens_[token];
  if (t.empty()) {  // a special token: only EOS, only at the end (the state stays kDone)
    if (token == eos_id_ && s.phase == ScanPhase::kDone) return true;
    s.phase = ScanPhase::kReject;
    return false;
  }
  return grammar_.feed(s, reinterpret_cast<const uint8_t*>(t.data()), t.size()) < 0;
}

}  // namespace jpeglm
