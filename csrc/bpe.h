// Byte-level BPE: training, encoding, decoding. Pure C++17, no Python types.
//
// Vocabulary model. A vocabulary is a list of tokens indexed by id. A token is either a byte
// string (a "mergeable" token) or a special token (BOS, EOS, pad, unk, ... — no bytes, never
// produced by encoding). Every mergeable token of two or more bytes has a rank: its merge
// priority, lower first. In vocabularies trained here the rank equals the id (tiktoken's
// convention: ids 0-255 are the single bytes, merge k has id and rank 256 + k).
//
// Encoding (tiktoken's semantics, exactly): the input starts as one symbol per byte; repeatedly
// find the adjacent symbol pair (x, y) whose concatenated bytes form a mergeable token of the
// lowest rank — among equal ranks the leftmost pair — and replace the two symbols by that token;
// stop when no adjacent pair concatenates to a token. Pairs are matched by their bytes, not by
// the training merge that created the token (so `a + bc` merges into `abc` as well as `ab + c`).
// A byte with no single-byte token becomes the unk token (an error when there is none); unk
// symbols never merge, and with `fuse_unk` a run of them is one unk (sentencepiece's behaviour).
// With `whole_token` an input that is exactly the bytes of a mergeable token encodes to that
// token (tiktoken does this for every piece, HF tokenizers with `ignore_merges`); it differs
// from plain BPE only for a token whose own bytes BPE-encode to several tokens.
//
// Training: plain BPE over a corpus of documents (pairs never cross a document boundary). Each
// step merges the most frequent adjacent pair everywhere it occurs, left to right. Ties between
// pairs of equal count go to the lexicographically smallest pair of ids (left, right). Counts are
// kept incrementally (a pair -> positions index over a linked list of symbols and a lazy max-heap
// of counts), so a step costs time proportional to the occurrences it merges, not to the corpus.
// A pair whose bytes equal an existing token is merged into that token (no new id). A pair whose
// bytes would exceed kMaxTokenBytes is never merged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace jpeglm {

// Raised on bad input: a malformed vocabulary, an id out of range, a byte with no token...
class BpeError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

constexpr uint32_t kNoToken = 0xFFFFFFFFu;
constexpr uint32_t kMaxRank = 0xFFFFFFFEu;                    // ranks are 0..kMaxRank
constexpr std::size_t kMaxVocabSize = std::size_t(1) << 20;   // ids are < 1,048,576
constexpr std::size_t kMaxTokenBytes = std::size_t(1) << 16;  // one token: at most 64 KiB
constexpr std::size_t kMaxTotalTokenBytes = std::size_t(1) << 23;  // all tokens: 8 MiB
constexpr std::size_t kMaxMergePairs = std::size_t(1) << 22;  // (x, y) -> token pairs
constexpr std::size_t kMaxInputBytes = 0xFFFFFFF0u;  // one encode input / a training corpus

struct ByteSpan {
  const uint8_t* data = nullptr;
  std::size_t size = 0;
};

// ------------------------------------------------------------------------------------------------
// Training

struct BpeMerge {
  uint32_t left = 0, right = 0;  // the pair that created token 256 + k
};

// progress(new_tokens, num_merges) after each new token; it may throw to cancel.
using BpeProgress = std::function<void(std::size_t, std::size_t)>;

// Learns up to `num_merges` new tokens over ids 0-255 = bytes; returns the merge that created
// each new token, in id order (fewer when no pair is left). `threads` (<= 0: all cores) count the
// initial pairs; the merge loop is sequential. Throws BpeError for an empty or too large corpus.
std::vector<BpeMerge> bpe_train(const std::vector<ByteSpan>& docs, std::size_t num_merges,
                                int threads = 0, const BpeProgress& progress = {});

// ------------------------------------------------------------------------------------------------
// A vocabulary ready for encoding and decoding (immutable, safe to share between threads).

struct BpeToken {
  bool special = false;  // no bytes; never produced by encode; skipped or refused by decode
  std::string bytes;     // mergeable tokens only: 1..kMaxTokenBytes bytes, all distinct
  uint32_t rank = 0;     // merge priority (lower first); ignored for single bytes and specials
};

class Bpe {
 public:
  // Validates the vocabulary (sizes, distinct byte strings, unk_id a special) and builds the
  // pair table: every (x, y) whose bytes concatenate to a mergeable token. Throws BpeError.
  Bpe(std::vector<BpeToken> tokens, uint32_t unk_id = kNoToken, bool fuse_unk = false,
      bool whole_token = false);
  Bpe(const Bpe&) = delete;  // whole_ views bytes_
  Bpe& operator=(const Bpe&) = delete;

  std::size_t vocab_size() const { return special_.size(); }
  uint32_t unk_id() const { return unk_id_; }
  std::size_t num_pairs() const { return num_pairs_; }
  bool is_special(uint32_t id) const { return special_[id] != 0; }

  // Appends the tokens of data[0..n) to `out` (Id: uint16_t when the vocabulary fits, uint32_t).
  template <class Id>
  void encode(const uint8_t* data, std::size_t n, std::vector<Id>& out) const;

  // Bytes of the decoded ids; throws BpeError naming the first bad position (out of range, or
  // a special token when !skip_special). T: any integer type.
  template <class T>
  std::size_t decoded_size(const T* ids, std::size_t n, bool skip_special) const;
  // Writes the bytes of ids to out (at most `capacity`, else BpeError); returns their number.
  template <class T>
  std::size_t decode_into(const T* ids, std::size_t n, bool skip_special, uint8_t* out,
                          std::size_t capacity) const;

 private:
  uint32_t pair_result(uint32_t left, uint32_t right) const;
  template <class Id>
  Id* encode_short(const uint8_t* data, std::size_t n, Id* o) const;
  template <class Id>
  Id* encode_long(const uint8_t* data, std::size_t n, Id* o) const;
  template <class T>
  uint32_t checked_id(T value, std::size_t pos, bool skip_special) const;
  [[noreturn]] void bad_id(int64_t value, bool huge, std::size_t pos, bool special) const;
  std::size_t vocab_size_ = 0;

  std::vector<uint8_t> special_;       // per id
  std::vector<uint32_t> rank_;         // per id: dense rank 0..num_ranks_-1 (kNoToken: none)
  uint32_t num_ranks_ = 0;  // distinct ranks
  std::vector<uint64_t> offset_;       // per id + 1: bytes of id are bytes_[offset_[id]..[id+1])
  std::string bytes_;                  // all token bytes
  uint32_t byte_id_[256];              // single-byte token per byte value (unk when missing)
  std::vector<uint32_t> byte_pair_;    // 65536: pair of two bytes -> merged token or kNoToken
  std::vector<uint64_t> cross_;        // 65536 bits: the two bytes occur together in a token
  std::vector<uint64_t> pair_keys_;    // open addressing: (x << 32 | y) -> merged token
  std::vector<uint32_t> pair_vals_;
  unsigned pair_shift_ = 64;
  std::size_t num_pairs_ = 0;
  uint32_t unk_id_ = kNoToken;
  bool fuse_unk_ = false;
  bool bytes_missing_ = false;  // some byte has no token and there is no unk to stand for it
  bool whole_token_ = false;
  std::size_t max_token_bytes_ = 0;
  std::unordered_map<std::string_view, uint32_t> whole_;  // bytes -> id, multi-byte tokens
};

// ------------------------------------------------------------------------------------------------
// Decoding templates

template <class T>
inline uint32_t Bpe::checked_id(T value, std::size_t pos, bool skip_special) const {
  static_assert(std::is_integral<T>::value, "token ids must be integers");
  bool negative = false;
  if constexpr (std::is_signed<T>::value) negative = value < 0;
  if (__builtin_expect(negative || static_cast<uint64_t>(value) >= vocab_size_, 0))
    bad_id(static_cast<int64_t>(value), !negative && static_cast<uint64_t>(value) > INT64_MAX,
           pos, false);
  const uint32_t id = static_cast<uint32_t>(value);
  if (__builtin_expect(!skip_special && special_[id], 0)) bad_id(id, false, pos, true);
  return id;
}

template <class T>
std::size_t Bpe::decoded_size(const T* ids, std::size_t n, bool skip_special) const {
  const uint64_t* offset = offset_.data();
  std::size_t total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const uint32_t id = checked_id(ids[i], i, skip_special);
    total += static_cast<std::size_t>(offset[id + 1] - offset[id]);
  }
  return total;
}

// Every id is checked again, and the output bounded: the caller may not hold the ids still
// (another thread could change a numpy array between the two passes).
template <class T>
std::size_t Bpe::decode_into(const T* ids, std::size_t n, bool skip_special, uint8_t* out,
                             std::size_t capacity) const {
  // Locals, not members: writes through uint8_t* could alias them and force reloads.
  const uint64_t* offset = offset_.data();
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(bytes_.data());
  std::size_t written = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const uint32_t id = checked_id(ids[i], i, skip_special);
    const uint64_t begin = offset[id];
    const std::size_t len = static_cast<std::size_t>(offset[id + 1] - begin);
    if (__builtin_expect(len > capacity - written, 0))
      throw BpeError("the token ids changed while being decoded");
    if (len == 1) {
      out[written] = bytes[begin];
    } else if (len != 0) {  // a skipped special: out may be null when capacity is 0
      std::memcpy(out + written, bytes + begin, len);
    }
    written += len;
  }
  return written;
}

}  // namespace jpeglm
