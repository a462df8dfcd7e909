// BPE vocabulary construction (what Tokenizer.load / from_sentencepiece hand to the native
// side), encode and decode on fuzzer-chosen vocabularies, inputs and ids.
//
// Input: byte 0: flags (whole_token, fuse_unk, an unk token, the 256 single bytes first);
// byte 1: number of extra tokens (0..63), each: a length byte (0 = special; else 1..8 bytes)
// and, for multi-byte tokens, a rank byte; the rest is the text to encode (also reread as ids).
// Checked: construction throws only BpeError; encode<uint16_t> == encode<uint32_t> == a naive
// reference implementation of the documented semantics; decode(encode(x)) == x without unk;
// decoded_size / decode_into agree and respect the capacity.
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bpe.h"
#include "fuzz_common.h"

namespace {

// The documented semantics, directly: repeatedly merge the leftmost lowest-rank adjacent pair
// whose concatenated bytes are a mergeable token. Only for inputs with a token for every byte.
std::vector<uint32_t> naive_encode(const std::vector<jpeglm::BpeToken>& vocab, bool whole_token,
                                   const uint8_t* data, std::size_t n) {
  std::map<std::string, uint32_t> id_of;
  for (uint32_t id = 0; id < vocab.size(); ++id)
    if (!vocab[id].special) id_of[vocab[id].bytes] = id;
  std::vector<uint32_t> out;
  if (n == 0) return out;
  const std::string all(reinterpret_cast<const char*>(data), n);
  if (whole_token && n >= 2 && id_of.count(all)) return {id_of[all]};
  std::vector<std::string> sym;
  for (std::size_t i = 0; i < n; ++i) sym.emplace_back(1, static_cast<char>(data[i]));
  for (;;) {
    std::size_t best = sym.size();
    uint64_t best_rank = UINT64_MAX;
    for (std::size_t k = 0; k + 1 < sym.size(); ++k) {
      auto it = id_of.find(sym[k] + sym[k + 1]);
      if (it != id_of.end() && vocab[it->second].rank < best_rank) {
        best_rank = vocab[it->second].rank;
        best = k;
      }
    }
    if (best == sym.size()) break;
    sym[best] += sym[best + 1];
    sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  for (const auto& s : sym) out.push_back(id_of.at(s));
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const uint8_t flags = data[0];
  const std::size_t n_extra = data[1] % 64;
  std::size_t i = 2;
  const bool whole_token = flags & 1, fuse_unk = flags & 2, with_unk = flags & 4,
             singles = flags & 8;
  std::vector<jpeglm::BpeToken> vocab;
  if (singles)
    for (int b = 0; b < 256; ++b) {
      jpeglm::BpeToken t;
      t.bytes.assign(1, static_cast<char>(b));
      vocab.push_back(t);
    }
  uint32_t unk = jpeglm::kNoToken;
  if (with_unk) {
    jpeglm::BpeToken t;
    t.special = true;
    unk = static_cast<uint32_t>(vocab.size());
    vocab.push_back(t);
  }
  for (std::size_t t = 0; t < n_extra && i < size; ++t) {
    jpeglm::BpeToken tok;
    const std::size_t len = data[i++] % 9;
    if (len == 0) {
      tok.special = true;
    } else {
      for (std::size_t k = 0; k < len && i < size; ++k) tok.bytes.push_back(static_cast<char>(data[i++]));
      if (i < size) tok.rank = data[i++];
    }
    vocab.push_back(tok);
  }
  if (flags & 16) unk = static_cast<uint32_t>(data[1]);  // possibly not a special: refused
  const std::vector<jpeglm::BpeToken> kept = vocab;
  std::unique_ptr<jpeglm::Bpe> bpe;
  try {
    bpe = std::make_unique<jpeglm::Bpe>(std::move(vocab), unk, fuse_unk, whole_token);
  } catch (const jpeglm::BpeError&) {
    return 0;
  }
  const std::size_t V = bpe->vocab_size();
  FUZZ_CHECK(V == kept.size());
  const uint8_t* text = data + i;
  const std::size_t n = size - i;

  std::vector<uint16_t> ids16;
  std::vector<uint32_t> ids32;
  bool threw16 = false, threw32 = false;
  try {
    bpe->encode(text, n, ids16);
  } catch (const jpeglm::BpeError&) {
    threw16 = true;
  }
  try {
    bpe->encode(text, n, ids32);
  } catch (const jpeglm::BpeError&) {
    threw32 = true;
  }
  FUZZ_CHECK(threw16 == threw32);
  if (!threw32) {
    FUZZ_CHECK(ids16.size() == ids32.size());
    bool has_unk = false;
    for (std::size_t k = 0; k < ids32.size(); ++k) {
      FUZZ_CHECK(ids16[k] == ids32[k]);
      FUZZ_CHECK(ids32[k] < V);
      if (bpe->is_special(ids32[k])) {
        FUZZ_CHECK(ids32[k] == bpe->unk_id());
        has_unk = true;
      }
    }
    FUZZ_CHECK(ids32.size() <= n);
    if (!has_unk) {
      FUZZ_CHECK(ids32 == naive_encode(kept, whole_token, text, n));
      std::size_t total = bpe->decoded_size(ids32.data(), ids32.size(), false);
      FUZZ_CHECK(total == n);
      std::vector<uint8_t> back(total + 1);
      std::size_t w = bpe->decode_into(ids32.data(), ids32.size(), false, back.data(), total);
      FUZZ_CHECK(w == n);
      FUZZ_CHECK(std::equal(back.begin(), back.begin() + static_cast<std::ptrdiff_t>(n), text));
    }
  }

  // Arbitrary ids (the text reread as little-endian int32 values), both skip modes.
  std::vector<int32_t> raw(n / 4);
  for (std::size_t k = 0; k < raw.size(); ++k)
    std::memcpy(&raw[k], text + 4 * k, 4);
  for (int32_t& r : raw)
    if (flags & 32) r = static_cast<int32_t>(static_cast<uint32_t>(r) % (V + 2));
  for (bool skip : {false, true}) {
    std::size_t total = 0;
    try {
      total = bpe->decoded_size(raw.data(), raw.size(), skip);
    } catch (const jpeglm::BpeError&) {
      continue;
    }
    std::vector<uint8_t> out(total);
    FUZZ_CHECK(bpe->decode_into(raw.data(), raw.size(), skip, out.data(), total) == total);
    if (total > 0) {
      bool threw = false;
      try {
        bpe->decode_into(raw.data(), raw.size(), skip, out.data(), total - 1);
      } catch (const jpeglm::BpeError&) {
        threw = true;
      }
      FUZZ_CHECK(threw);
    }
  }
  return 0;
}
