// Text <-> token ids. The byte tokenizer (one token per byte) serves generated models; real
// vocabularies (BPE from tokenizer.json or GGUF metadata) implement the same interface.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace starattn {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  // Raw bytes of one token (may be part of a UTF-8 character).
  virtual std::string token_bytes(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual std::vector<int32_t> eos_ids() const = 0;
};

// Ids 0..255 are bytes; 256 BOS, 257 EOS, 258 PAD. A model without a vocabulary of its own
// whose embedding table is larger (random checkpoints) gets `vocab` > 259: the ids past the
// bytes are tokens without text.
class ByteTokenizer : public Tokenizer {
 public:
  static constexpr int32_t kBos = 256, kEos = 257, kPad = 258, kVocab = 259;
  explicit ByteTokenizer(int32_t vocab = kVocab) : vocab_(vocab < kVocab ? kVocab : vocab) {}
  std::vector<int32_t> encode(const std::string& text) const override;
  std::string token_bytes(int32_t id) const override;
  int32_t vocab_size() const override { return vocab_; }
  int32_t bos_id() const override { return kBos; }
  std::vector<int32_t> eos_ids() const override { return {kEos}; }

 private:
  int32_t vocab_;
};

// Turns a stream of token ids into text pieces that never split a UTF-8 character: bytes of an
// incomplete character are held until it completes (or flushed as-is at the end).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string push(int32_t id);
  std::string flush();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;
};

}  // namespace starattn
