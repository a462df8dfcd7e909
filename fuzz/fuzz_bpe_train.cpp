// bpe_train on a fuzzer-chosen corpus (documents split at 0xFF 0xFE): the learned merges must
// form a valid vocabulary (distinct byte strings) and encode/decode every document losslessly.
#include <algorithm>
#include <string>
#include <vector>

#include "bpe.h"
#include "fuzz_common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t num_merges = data[0] % 64;
  ++data;
  --size;
  std::vector<jpeglm::ByteSpan> docs;
  std::size_t start = 0;
  for (std::size_t k = 0; k + 1 < size; ++k)
    if (data[k] == 0xFF && data[k + 1] == 0xFE) {
      docs.push_back({data + start, k - start});
      start = k + 2;
      ++k;
    }
  if (start <= size) docs.push_back({data + start, size - start});
  std::vector<jpeglm::BpeMerge> merges;
  try {
    merges = jpeglm::bpe_train(docs, num_merges, 1);
  } catch (const jpeglm::BpeError&) {
    return 0;
  }
  FUZZ_CHECK(merges.size() <= num_merges);
  std::vector<jpeglm::BpeToken> vocab(256);
  for (int b = 0; b < 256; ++b) vocab[b].bytes.assign(1, static_cast<char>(b));
  for (std::size_t k = 0; k < merges.size(); ++k) {
    FUZZ_CHECK(merges[k].left < vocab.size() && merges[k].right < vocab.size());
    jpeglm::BpeToken t;
    t.bytes = vocab[merges[k].left].bytes + vocab[merges[k].right].bytes;
    t.rank = static_cast<uint32_t>(256 + k);
    vocab.push_back(t);
  }
  jpeglm::Bpe bpe(std::move(vocab));  // must not throw: trained tokens are distinct
  for (const auto& d : docs) {
    std::vector<uint32_t> ids;
    bpe.encode(d.data, d.size, ids);
    std::size_t total = bpe.decoded_size(ids.data(), ids.size(), false);
    FUZZ_CHECK(total == d.size);
    std::vector<uint8_t> back(total);
    bpe.decode_into(ids.data(), ids.size(), false, back.data(), total);
    FUZZ_CHECK(std::equal(back.begin(), back.end(), d.data));
  }
  return 0;
}
