// Byte-level BPE: see bpe.h for the semantics.
#include "bpe.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <string_view>
#include <unordered_map>

#include "parallel.h"

namespace jpeglm {

namespace {

// ------------------------------------------------------------------------------------------------
// A small open-addressing hash map from an unsigned key (all-ones reserved) to a value.

template <class K, class V>
class FlatMap {
 public:
  explicit FlatMap(std::size_t expected = 16) { reserve(expected); }

  const V* find(K key) const {
    for (std::size_t i = slot(key);; i = (i + 1) & mask_) {
      if (keys_[i] == key) return &vals_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }

  // The value of key, inserted as `init` when absent.
  V& get(K key, V init, bool* inserted = nullptr) {
    if (2 * (size_ + 1) > keys_.size()) reserve(2 * (size_ + 1));
    std::size_t i = slot(key);
    while (keys_[i] != kEmpty) {
      if (keys_[i] == key) {
        if (inserted) *inserted = false;
        return vals_[i];
      }
      i = (i + 1) & mask_;
    }
    keys_[i] = key;
    vals_[i] = init;
    ++size_;
    if (inserted) *inserted = true;
    return vals_[i];
  }

  std::size_t size() const { return size_; }

  // Keys and values, for building a frozen copy.
  const std::vector<K>& keys() const { return keys_; }
  const std::vector<V>& values() const { return vals_; }
  unsigned shift() const { return shift_; }
  static constexpr K kEmpty = ~K(0);

  static std::size_t slot_of(K key, unsigned shift) {
    return static_cast<std::size_t>((static_cast<uint64_t>(key) * 0x9E3779B97F4A7C15ull) >> shift);
  }

 private:
  std::size_t slot(K key) const { return slot_of(key, shift_); }

  // Grows to hold `n` keys at load <= 1/2.
  void reserve(std::size_t n) {
    std::size_t cap = 16;
    unsigned bits = 4;
    while (cap < 2 * n) {
      cap <<= 1;
      ++bits;
    }
    if (cap <= keys_.size()) return;
    std::vector<K> old_keys(cap, kEmpty);
    std::vector<V> old_vals(cap);
    old_keys.swap(keys_);
    old_vals.swap(vals_);
    mask_ = cap - 1;
    shift_ = 64 - bits;
    for (std::size_t i = 0; i < old_keys.size(); ++i) {
      if (old_keys[i] == kEmpty) continue;
      std::size_t j = slot(old_keys[i]);
      while (keys_[j] != kEmpty) j = (j + 1) & mask_;
      keys_[j] = old_keys[i];
      vals_[j] = old_vals[i];
    }
  }

  std::vector<K> keys_;
  std::vector<V> vals_;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
  unsigned shift_ = 60;
};

inline uint64_t pair_key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

// A byte trie over the vocabulary's byte strings: node -> token id ending there.
class Trie {
 public:
  explicit Trie(std::size_t expected_nodes) : edges_(expected_nodes) { token_.push_back(kNoToken); }

  // The node reached from `node` by byte b, created when absent.
  uint32_t add(uint32_t node, uint8_t b) {
    bool inserted = false;
    uint32_t& child = edges_.get((node << 8) | b, 0, &inserted);
    if (inserted) {
      child = static_cast<uint32_t>(token_.size());
      token_.push_back(kNoToken);
    }
    return child;
  }
  uint32_t next(uint32_t node, uint8_t b) const {
    const uint32_t* child = edges_.find((node << 8) | b);
    return child ? *child : kNoToken;
  }
  uint32_t& token(uint32_t node) { return token_[node]; }

 private:
  FlatMap<uint32_t, uint32_t> edges_;
  std::vector<uint32_t> token_;
};

}  // namespace

// ================================================================================================
// The vocabulary

Bpe::Bpe(std::vector<BpeToken> tokens, uint32_t unk_id, bool fuse_unk, bool whole_token)
    : unk_id_(unk_id), fuse_unk_(fuse_unk), whole_token_(whole_token) {
  const std::size_t vocab = tokens.size();
  if (vocab == 0) throw BpeError("the vocabulary is empty");
  if (vocab > kMaxVocabSize)
    throw BpeError("vocabulary of " + std::to_string(vocab) + " tokens exceeds the limit of " +
                   std::to_string(kMaxVocabSize));
  if (unk_id != kNoToken && (unk_id >= vocab || !tokens[unk_id].special))
    throw BpeError("unk id " + std::to_string(unk_id) + " is not a special token");

  vocab_size_ = vocab;
  special_.resize(vocab);
  rank_.assign(vocab, kNoToken);
  offset_.assign(vocab + 1, 0);
  std::size_t total = 0;
  for (std::size_t id = 0; id < vocab; ++id) {
    const BpeToken& t = tokens[id];
    special_[id] = t.special ? 1 : 0;
    if (t.special) continue;
    if (t.bytes.empty()) throw BpeError("token " + std::to_string(id) + " has no bytes");
    if (t.bytes.size() > kMaxTokenBytes)
      throw BpeError("token " + std::to_string(id) + " is longer than " +
                     std::to_string(kMaxTokenBytes) + " bytes");
    total += t.bytes.size();
    if (total > kMaxTotalTokenBytes)
      throw BpeError("the tokens' bytes exceed the limit of " +
                     std::to_string(kMaxTotalTokenBytes) + " bytes in all");
    if (t.bytes.size() >= 2) {
      if (t.rank > kMaxRank) throw BpeError("token " + std::to_string(id) + " has a bad rank");
      rank_[id] = t.rank;
    }
  }
  {
    // Only the order of ranks matters: make them dense (equal ranks stay equal).
    std::vector<uint32_t> distinct;
    for (uint32_t r : rank_)
      if (r != kNoToken) distinct.push_back(r);
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    for (uint32_t& r : rank_)
      if (r != kNoToken)
        r = static_cast<uint32_t>(std::lower_bound(distinct.begin(), distinct.end(), r) -
                                  distinct.begin());
    num_ranks_ = static_cast<uint32_t>(distinct.size());
  }
  bytes_.reserve(total);
  for (std::size_t id = 0; id < vocab; ++id) {
    if (!special_[id]) bytes_ += tokens[id].bytes;
    offset_[id + 1] = bytes_.size();
  }
  for (std::size_t id = 0; id < vocab; ++id) {
    const std::size_t len = static_cast<std::size_t>(offset_[id + 1] - offset_[id]);
    max_token_bytes_ = std::max(max_token_bytes_, len);
    if (whole_token_ && len >= 2)
      whole_.emplace(std::string_view(bytes_.data() + offset_[id], len),
                     static_cast<uint32_t>(id));
  }

  // Forward and reverse tries: distinct byte strings, then every split of every token.
  Trie fwd(total + 1), rev(total + 1);
  for (uint32_t id = 0; id < vocab; ++id) {
    if (special_[id]) continue;
    const std::string& b = tokens[id].bytes;
    uint32_t node = 0;
    for (char c : b) node = fwd.add(node, static_cast<uint8_t>(c));
    if (fwd.token(node) != kNoToken)
      throw BpeError("tokens " + std::to_string(fwd.token(node)) + " and " + std::to_string(id) +
                     " have the same bytes");
    fwd.token(node) = id;
    node = 0;
    for (auto it = b.rbegin(); it != b.rend(); ++it) node = rev.add(node, static_cast<uint8_t>(*it));
    rev.token(node) = id;
  }
  for (int b = 0; b < 256; ++b) {
    uint32_t node = fwd.next(0, static_cast<uint8_t>(b));
    uint32_t id = node == kNoToken ? kNoToken : fwd.token(node);
    byte_id_[b] = id != kNoToken ? id : unk_id_;
    if (byte_id_[b] == kNoToken) bytes_missing_ = true;
  }

  FlatMap<uint64_t, uint32_t> pairs(1024);
  std::vector<uint32_t> prefix, suffix;  // token id of t[:s] / t[s:], per split s
  for (uint32_t id = 0; id < vocab; ++id) {
    if (special_[id]) continue;
    const std::string& b = tokens[id].bytes;
    const std::size_t len = b.size();
    if (len < 2) continue;
    prefix.assign(len, kNoToken);
    suffix.assign(len, kNoToken);
    uint32_t node = 0;
    for (std::size_t k = 0; k + 1 < len; ++k) {
      node = fwd.next(node, static_cast<uint8_t>(b[k]));
      prefix[k + 1] = fwd.token(node);
    }
    node = 0;
    for (std::size_t k = len - 1; k >= 1; --k) {
      node = rev.next(node, static_cast<uint8_t>(b[k]));
      suffix[k] = rev.token(node);
    }
    for (std::size_t s = 1; s < len; ++s) {
      if (prefix[s] == kNoToken || suffix[s] == kNoToken) continue;
      pairs.get(pair_key(prefix[s], suffix[s]), id);
      if (pairs.size() > kMaxMergePairs)
        throw BpeError("the vocabulary has more than " + std::to_string(kMaxMergePairs) +
                       " token pairs that merge; it is too degenerate");
    }
  }
  num_pairs_ = pairs.size();
  pair_keys_ = pairs.keys();
  pair_vals_ = pairs.values();
  pair_shift_ = pairs.shift();

  cross_.assign(65536 / 64, 0);
  for (std::size_t id = 0; id < vocab; ++id) {
    const std::size_t len = static_cast<std::size_t>(offset_[id + 1] - offset_[id]);
    const auto* b = reinterpret_cast<const uint8_t*>(bytes_.data() + offset_[id]);
    for (std::size_t k = 0; k + 1 < len; ++k) {
      const uint32_t pair = (static_cast<uint32_t>(b[k]) << 8) | b[k + 1];
      cross_[pair >> 6] |= uint64_t(1) << (pair & 63);
    }
  }
  byte_pair_.assign(65536, kNoToken);
  for (int a = 0; a < 256; ++a) {
    for (int c = 0; c < 256; ++c) {
      uint32_t x = byte_id_[a], y = byte_id_[c];
      if (x == kNoToken || y == kNoToken || x == unk_id_ || y == unk_id_) continue;
      byte_pair_[(a << 8) | c] = pair_result(x, y);
    }
  }
}

void Bpe::bad_id(int64_t value, bool huge, std::size_t pos, bool special) const {
  if (special)
    throw BpeError("token id " + std::to_string(value) + " at position " + std::to_string(pos) +
                   " is a special token (it has no bytes)");
  throw BpeError("token id " + (huge ? std::string("> 2**63") : std::to_string(value)) +
                 " at position " + std::to_string(pos) + " is out of range for a vocabulary of " +
                 std::to_string(vocab_size_));
}

inline uint32_t Bpe::pair_result(uint32_t left, uint32_t right) const {
  const uint64_t key = pair_key(left, right);
  const std::size_t mask = pair_keys_.size() - 1;
  for (std::size_t i = FlatMap<uint64_t, uint32_t>::slot_of(key, pair_shift_);;
       i = (i + 1) & mask) {
    const uint64_t k = pair_keys_[i];
    if (k == key) return pair_vals_[i];
    if (k == FlatMap<uint64_t, uint32_t>::kEmpty) return kNoToken;
  }
}

// ================================================================================================
// Encoding.
//
// 1. Split the input where no token can ever span: between two bytes (x, y) that occur next to
//    each other in no token (the `cross_` bitset). No merge crosses such a boundary, and BPE of
//    each segment on its own gives the same result as BPE of the whole (merges in different
//    segments never interact). On JPEG data most segments are a single byte.
// 2. A short segment: tiktoken's small-piece algorithm (arrays, a linear scan for the lowest
//    rank, leftmost first). A long one: a doubly linked list of symbols and a binary min-heap of
//    candidate merges keyed (rank << 32 | position), validated lazily against cand[position].

namespace {

constexpr std::size_t kShortSegment = 48;

struct EncodeScratch {
  std::vector<uint32_t> sym, nxt, prv, cand, cres;
  std::vector<uint64_t> heap;
  void resize(std::size_t n) {
    if (sym.size() < n) {
      sym.resize(n);
      nxt.resize(n);
      prv.resize(n);
      cand.resize(n);
      cres.resize(n);
    }
    heap.clear();
  }
};

thread_local EncodeScratch tls_scratch;

}  // namespace

// Writes the tokens of a short segment (2 <= n <= kShortSegment) to o; returns the new end.
template <class Id>
Id* Bpe::encode_short(const uint8_t* data, std::size_t n, Id* o) const {
  uint32_t ids[kShortSegment], rk[kShortSegment], res[kShortSegment];
  const uint32_t* rank = rank_.data();
  for (std::size_t k = 0; k < n; ++k) ids[k] = byte_id_[data[k]];
  for (std::size_t k = 0; k + 1 < n; ++k) {
    const uint32_t r = byte_pair_[(data[k] << 8) | data[k + 1]];
    res[k] = r;
    rk[k] = r == kNoToken ? kNoToken : rank[r];
  }
  rk[n - 1] = kNoToken;
  std::size_t len = n;
  for (;;) {
    uint32_t best = kNoToken;
    std::size_t at = 0;
    for (std::size_t k = 0; k + 1 < len; ++k) {
      if (rk[k] < best) {
        best = rk[k];
        at = k;
      }
    }
    if (best == kNoToken) break;
    ids[at] = res[at];
    for (std::size_t k = at + 1; k + 1 < len; ++k) {
      ids[k] = ids[k + 1];
      rk[k] = rk[k + 1];
      res[k] = res[k + 1];
    }
    --len;
    rk[len - 1] = kNoToken;
    if (at + 1 < len) {
      const uint32_t r = pair_result(ids[at], ids[at + 1]);
      res[at] = r;
      rk[at] = r == kNoToken ? kNoToken : rank[r];
    } else {
      rk[at] = kNoToken;
    }
    if (at > 0) {
      const uint32_t r = pair_result(ids[at - 1], ids[at]);
      res[at - 1] = r;
      rk[at - 1] = r == kNoToken ? kNoToken : rank[r];
    }
  }
  for (std::size_t k = 0; k < len; ++k) *o++ = static_cast<Id>(ids[k]);
  return o;
}

// Writes the tokens of a segment of any length (n >= 2) to o; returns the new end.
template <class Id>
Id* Bpe::encode_long(const uint8_t* data, std::size_t n, Id* o) const {
  EncodeScratch& s = tls_scratch;
  s.resize(n);
  uint32_t* sym = s.sym.data();
  uint32_t* nxt = s.nxt.data();
  uint32_t* prv = s.prv.data();
  uint32_t* cand = s.cand.data();
  uint32_t* cres = s.cres.data();
  std::vector<uint64_t>& heap = s.heap;
  const uint32_t* rank = rank_.data();
  const uint32_t n32 = static_cast<uint32_t>(n);

  for (uint32_t i = 0; i < n32; ++i) {
    sym[i] = byte_id_[data[i]];
    nxt[i] = i + 1;
    prv[i] = i - 1;  // kNoToken for i == 0
    cand[i] = kNoToken;
    if (i + 1 < n32) {
      const uint32_t r = byte_pair_[(data[i] << 8) | data[i + 1]];
      if (r != kNoToken) {
        cand[i] = rank[r];
        cres[i] = r;
        heap.push_back((static_cast<uint64_t>(rank[r]) << 32) | i);
      }
    }
  }
  auto update = [&](uint32_t p, uint32_t a, uint32_t b) {
    const uint32_t r = pair_result(a, b);
    if (r == kNoToken) {
      cand[p] = kNoToken;
      return;
    }
    cand[p] = rank[r];
    cres[p] = r;
    heap.push_back((static_cast<uint64_t>(rank[r]) << 32) | p);
    std::push_heap(heap.begin(), heap.end(), std::greater<uint64_t>());
  };
  std::make_heap(heap.begin(), heap.end(), std::greater<uint64_t>());
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), std::greater<uint64_t>());
    const uint64_t key = heap.back();
    heap.pop_back();
    const uint32_t i = static_cast<uint32_t>(key);
    if (cand[i] != static_cast<uint32_t>(key >> 32)) continue;  // stale
    const uint32_t t = cres[i];
    const uint32_t j = nxt[i];
    const uint32_t m = nxt[j];
    sym[i] = t;
    sym[j] = kNoToken;  // dead
    cand[j] = kNoToken;
    nxt[i] = m;
    if (m < n32) {
      prv[m] = i;
      update(i, t, sym[m]);
    } else {
      cand[i] = kNoToken;
    }
    const uint32_t p = prv[i];
    if (p != kNoToken) update(p, sym[p], t);
  }
  for (uint32_t i = 0; i < n32; i = nxt[i]) *o++ = static_cast<Id>(sym[i]);
  return o;
}

template <class Id>
void Bpe::encode(const uint8_t* data, std::size_t n, std::vector<Id>& out) const {
  if (n == 0) return;
  if (n > kMaxInputBytes)
    throw BpeError("input of " + std::to_string(n) + " bytes is too large to encode at once");
  if (bytes_missing_) {
    for (std::size_t i = 0; i < n; ++i)
      if (byte_id_[data[i]] == kNoToken)
        throw BpeError("byte " + std::to_string(data[i]) + " at position " + std::to_string(i) +
                       " has no token and the vocabulary has no unk token");
  }
  const std::size_t base = out.size();
  if (whole_token_ && n >= 2 && n <= max_token_bytes_) {
    auto it = whole_.find(std::string_view(reinterpret_cast<const char*>(data), n));
    if (it != whole_.end()) {
      out.push_back(static_cast<Id>(it->second));
      return;
    }
  }
  out.resize(base + n);  // at most one token per byte; shrunk at the end
  Id* const begin = out.data() + base;
  Id* o = begin;
  const uint64_t* cross = cross_.data();
  std::size_t start = 0;  // of the current segment
  for (std::size_t i = 0; i + 1 < n; ++i) {
    const uint32_t pair = (static_cast<uint32_t>(data[i]) << 8) | data[i + 1];
    if ((cross[pair >> 6] >> (pair & 63)) & 1) continue;  // a token may span i | i + 1
    const std::size_t len = i + 1 - start;
    if (len == 1) {
      *o++ = static_cast<Id>(byte_id_[data[i]]);
    } else if (len <= kShortSegment) {
      o = encode_short(data + start, len, o);
    } else {
      o = encode_long(data + start, len, o);
    }
    start = i + 1;
  }
  const std::size_t len = n - start;
  if (len == 1) {
    *o++ = static_cast<Id>(byte_id_[data[start]]);
  } else if (len <= kShortSegment) {
    o = encode_short(data + start, len, o);
  } else {
    o = encode_long(data + start, len, o);
  }
  if (fuse_unk_ && unk_id_ != kNoToken) {  // a run of unk is one unk (sentencepiece)
    Id* w = begin;
    const Id unk = static_cast<Id>(unk_id_);
    for (Id* r = begin; r != o; ++r)
      if (!(*r == unk && w != begin && w[-1] == unk)) *w++ = *r;
    o = w;
  }
  out.resize(static_cast<std::size_t>(o - out.data()));
}

template void Bpe::encode<uint16_t>(const uint8_t*, std::size_t, std::vector<uint16_t>&) const;
template void Bpe::encode<uint32_t>(const uint8_t*, std::size_t, std::vector<uint32_t>&) const;

// ================================================================================================
// Training

namespace {

constexpr uint32_t kNone = kNoToken;

struct HeapEntry {
  int64_t count;
  uint32_t left, right, index;
};

// Max-heap order: higher count first, then the smaller (left, right).
struct HeapLess {
  bool operator()(const HeapEntry& x, const HeapEntry& y) const {
    if (x.count != y.count) return x.count < y.count;
    if (x.left != y.left) return x.left > y.left;
    return x.right > y.right;
  }
};

// The corpus is one array of symbols, a symbol starting at every live position; documents are
// separate lists. Pairs are indexed: the 65536 byte pairs by value, later ones through a hash
// map. Each pair has its exact count and the positions where it may occur (the initial byte
// pairs in one CSR array filled in parallel, later occurrences appended; entries go stale).
class Trainer {
 public:
  Trainer(const std::vector<ByteSpan>& docs, int threads) : pair_index_(1 << 16) {
    std::size_t total = 0;
    for (const ByteSpan& d : docs) {
      if (d.size == 0) continue;
      if (!d.data) throw BpeError("a corpus document has no data");
      total += d.size;
      if (total > kMaxInputBytes)
        throw BpeError("the corpus is larger than " + std::to_string(kMaxInputBytes) + " bytes");
      docs_.push_back(d);
    }
    if (total == 0) throw BpeError("the corpus is empty (no bytes to train on)");
    n_ = total;
    for (int b = 0; b < 256; ++b) tokens_.emplace_back(1, static_cast<char>(b));
    for (uint32_t b = 0; b < 256; ++b) by_bytes_.emplace(tokens_[b], b);
    init(threads);
  }

  std::vector<BpeMerge> run(std::size_t num_merges, const BpeProgress& progress) {
    std::vector<BpeMerge> merges;
    std::string joined;
    uint64_t step = 0;
    while (merges.size() < num_merges && !heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(), HeapLess());
      const HeapEntry top = heap_.back();
      heap_.pop_back();
      const uint32_t idx = top.index;
      if (excluded_[idx] || count_[idx] <= 0) continue;
      if (count_[idx] != top.count) {
        // Counts only rise with a push of the new count; a lower count is a lazy decrement.
        if (count_[idx] < top.count) push(idx);
        continue;
      }
      const uint32_t a = left_[idx], b = right_[idx];
      if (tokens_[a].size() + tokens_[b].size() > kMaxTokenBytes) {
        excluded_[idx] = 1;
        continue;
      }
      joined = tokens_[a];
      joined += tokens_[b];
      uint32_t t;
      auto found = by_bytes_.find(joined);
      const bool is_new = found == by_bytes_.end();
      if (!is_new) {
        t = found->second;  // the same bytes as an earlier token: merge into it
      } else {
        t = static_cast<uint32_t>(tokens_.size());
        tokens_.push_back(joined);
        by_bytes_.emplace(joined, t);
        merges.push_back({a, b});
      }
      ++step;
      apply(idx, a, b, t, step);
      if (is_new && progress) progress(merges.size(), num_merges);
    }
    return merges;
  }

 private:
  struct Node {
    uint32_t sym, nxt, prv;  // token (kNone: inside a merged symbol), neighbours (kNone: none)
  };

  // Builds the symbol list and the byte-pair index, counting on `threads` threads. The big
  // arrays are not zero-filled: each thread writes (and page-faults) its own part.
  void init(int threads) {
    node_.reset(new Node[n_]);
    init_pos_.reset(new uint32_t[n_]);
    if (threads <= 0) threads = default_threads();
    // Chunks of whole documents of about equal bytes, one per thread.
    std::size_t nchunks = std::min<std::size_t>(static_cast<std::size_t>(threads), docs_.size());
    if (n_ < (std::size_t(1) << 20)) nchunks = 1;
    std::vector<std::size_t> chunk_doc(nchunks + 1, docs_.size()), chunk_pos(nchunks + 1, n_);
    chunk_doc[0] = 0;
    chunk_pos[0] = 0;
    {
      std::size_t pos = 0, c = 1;
      for (std::size_t d = 0; d < docs_.size() && c < nchunks; ++d) {
        pos += docs_[d].size;
        if (pos >= n_ * c / nchunks) {
          chunk_doc[c] = d + 1;
          chunk_pos[c] = pos;
          ++c;
        }
      }
    }
    std::vector<std::vector<uint32_t>> counts(nchunks);
    Node* node = node_.get();
    parallel_for(nchunks, threads, [&](std::size_t c) {
      std::vector<uint32_t>& cnt = counts[c];
      cnt.assign(65536, 0);
      std::size_t pos = chunk_pos[c];
      for (std::size_t d = chunk_doc[c]; d < chunk_doc[c + 1]; ++d) {
        const uint8_t* p = docs_[d].data;
        const uint32_t len = static_cast<uint32_t>(docs_[d].size);
        const uint32_t base = static_cast<uint32_t>(pos);
        for (uint32_t k = 0; k < len; ++k)
          node[base + k] = {p[k], base + k + 1, base + k - 1};
        node[base].prv = kNone;
        node[base + len - 1].nxt = kNone;
        for (uint32_t k = 0; k + 1 < len; ++k) ++cnt[(p[k] << 8) | p[k + 1]];
        pos += len;
      }
    });
    // CSR offsets: pair idx, chunk c writes from init_off_[idx] + (counts of earlier chunks).
    init_off_.assign(65537, 0);
    init_done_.assign(65536, 0);
    const std::size_t npairs = 65536;
    left_.resize(npairs);
    right_.resize(npairs);
    count_.assign(npairs, 0);
    stamp_.assign(npairs, 0);
    excluded_.assign(npairs, 0);
    pos_.resize(npairs);
    std::size_t offset = 0;
    for (uint32_t idx = 0; idx < npairs; ++idx) {
      left_[idx] = idx >> 8;
      right_[idx] = idx & 255;
      init_off_[idx] = static_cast<uint32_t>(offset);
      const std::size_t start = offset;
      for (std::size_t c = 0; c < nchunks; ++c) {
        const uint32_t k = counts[c][idx];
        counts[c][idx] = static_cast<uint32_t>(offset);  // becomes this chunk's write cursor
        offset += k;
      }
      count_[idx] = static_cast<int64_t>(offset - start);
    }
    init_off_[npairs] = static_cast<uint32_t>(offset);
    uint32_t* init_pos = init_pos_.get();
    parallel_for(nchunks, threads, [&](std::size_t c) {
      uint32_t* cursor = counts[c].data();
      std::size_t pos = chunk_pos[c];
      // From the symbols, not the documents: a document changed since (by another thread)
      // must not break the counts' bounds.
      for (std::size_t d = chunk_doc[c]; d < chunk_doc[c + 1]; ++d) {
        const std::size_t len = docs_[d].size;
        for (std::size_t k = 0; k + 1 < len; ++k) {
          const uint32_t i = static_cast<uint32_t>(pos + k);
          init_pos[cursor[(node[i].sym << 8) | node[i + 1].sym]++] = i;
        }
        pos += len;
      }
    });
    for (uint32_t idx = 0; idx < npairs; ++idx)
      if (count_[idx] > 0) heap_.push_back({count_[idx], left_[idx], right_[idx], idx});
    std::make_heap(heap_.begin(), heap_.end(), HeapLess());
  }

  uint32_t pair_index(uint32_t a, uint32_t b) {
    if (a < 256 && b < 256) return (a << 8) | b;
    bool inserted = false;
    uint32_t& idx = pair_index_.get(pair_key(a, b), 0, &inserted);
    if (inserted) {
      idx = static_cast<uint32_t>(left_.size());
      left_.push_back(a);
      right_.push_back(b);
      count_.push_back(0);
      stamp_.push_back(0);
      excluded_.push_back(0);
      pos_.emplace_back();
    }
    return idx;
  }

  void push(uint32_t idx) {
    heap_.push_back({count_[idx], left_[idx], right_[idx], idx});
    std::push_heap(heap_.begin(), heap_.end(), HeapLess());
  }

  void decrement(uint32_t a, uint32_t b) { --count_[pair_index(a, b)]; }

  void increment(uint32_t a, uint32_t b, uint32_t pos, uint64_t step) {
    const uint32_t idx = pair_index(a, b);
    ++count_[idx];
    pos_[idx].push_back(pos);
    if (stamp_[idx] != step) {
      stamp_[idx] = step;
      raised_.push_back(idx);
    }
  }

  // Merges every occurrence of (a, b), left to right, into t, keeping all counts exact.
  void apply(uint32_t index, uint32_t a, uint32_t b, uint32_t t, uint64_t step) {
    std::vector<uint32_t> positions = std::move(pos_[index]);
    pos_[index] = {};
    if (!std::is_sorted(positions.begin(), positions.end()))
      std::sort(positions.begin(), positions.end());
    const uint32_t* first = positions.data();
    const uint32_t* last = first + positions.size();
    if (index < 65536 && !init_done_[index]) {
      init_done_[index] = 1;
      const uint32_t* ib = init_pos_.get() + init_off_[index];
      const uint32_t* ie = init_pos_.get() + init_off_[index + 1];
      if (positions.empty()) {
        first = ib;
        last = ie;
      } else {
        std::vector<uint32_t> both(static_cast<std::size_t>(ie - ib) + positions.size());
        std::merge(ib, ie, positions.begin(), positions.end(), both.begin());
        positions.swap(both);
        first = positions.data();
        last = first + positions.size();
      }
    }
    raised_.clear();
    Node* node = node_.get();
    for (const uint32_t* it = first; it != last; ++it) {
      const uint32_t i = *it;
      if (node[i].sym != a) continue;  // stale (the symbol changed or died)
      const uint32_t j = node[i].nxt;
      if (j == kNone || node[j].sym != b) continue;
      const uint32_t p = node[i].prv, k = node[j].nxt;
      if (p != kNone) {
        decrement(node[p].sym, a);
        increment(node[p].sym, t, p, step);
      }
      if (k != kNone) {
        decrement(b, node[k].sym);
        increment(t, node[k].sym, i, step);
      }
      --count_[index];
      node[i].sym = t;
      node[j].sym = kNone;
      node[i].nxt = k;
      if (k != kNone) node[k].prv = i;
    }
    for (const uint32_t idx : raised_)
      if (count_[idx] > 0 && !excluded_[idx]) push(idx);
  }

  std::vector<ByteSpan> docs_;
  std::size_t n_ = 0;
  std::unique_ptr<Node[]> node_;
  // Pairs, by index.
  std::vector<uint32_t> left_, right_;
  std::vector<int64_t> count_;
  std::vector<uint64_t> stamp_;    // the step that last raised the count (dedupes heap pushes)
  std::vector<uint8_t> excluded_;  // would exceed kMaxTokenBytes
  std::vector<std::vector<uint32_t>> pos_;  // appended positions of the left symbol
  std::unique_ptr<uint32_t[]> init_pos_;    // initial positions of byte pair idx:
  std::vector<uint32_t> init_off_;          // init_pos_[init_off_[idx] .. init_off_[idx + 1])
  std::vector<uint8_t> init_done_;          // the initial positions were merged
  FlatMap<uint64_t, uint32_t> pair_index_;
  std::vector<HeapEntry> heap_;
  std::vector<uint32_t> raised_;
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, uint32_t> by_bytes_;
};

}  // namespace

std::vector<BpeMerge> bpe_train(const std::vector<ByteSpan>& docs, std::size_t num_merges,
                                int threads, const BpeProgress& progress) {
  if (num_merges > kMaxVocabSize - 256)
    throw BpeError("num_merges " + std::to_string(num_merges) + " exceeds the limit of " +
                   std::to_string(kMaxVocabSize - 256));
  Trainer trainer(docs, threads);
  return trainer.run(num_merges, progress);
}

}  // namespace jpeglm
