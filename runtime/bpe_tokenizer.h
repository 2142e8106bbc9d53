// Byte-pair-encoding tokenizers: byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM2) and
// SentencePiece-style BPE with byte fallback (Llama 2, Mistral), loaded from a Hugging Face
// tokenizer.json or from GGUF vocabulary metadata.
//
// Encoding: added/special tokens are cut out of the text first (leftmost, longest), then each
// remaining segment is normalized (SentencePiece: spaces become U+2581, an optional prefix),
// pre-tokenized (runtime/pretokenize.h) and every piece is encoded by BPE: symbols start as
// bytes mapped to printable characters (byte-level) or as UTF-8 characters, and the adjacent
// pair with the best merge rank (or, for GGUF "llama" vocabularies, the merged token with the
// highest score) is merged until none is left, leftmost first on ties.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "runtime/pretokenize.h"
#include "runtime/tokenizer.h"

namespace starattn {

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = true;
  bool lstrip = false;       // the match swallows white space before it
  bool rstrip = false;       // ... and after it
  bool single_word = false;  // only matches when not inside a word
};

// When a SentencePiece-style normalizer puts U+2581 in front of a text segment.
enum class SpacePrefix { none, first, always };

// Everything a BpeTokenizer needs; filled by the loaders below (or by hand in tests).
struct BpeVocab {
  std::vector<std::string> tokens;  // by id, spelled as the vocabulary spells them
  // Merge rules by rank (first = best). Empty: merge by `scores` instead.
  std::vector<std::pair<std::string, std::string>> merges;
  std::vector<float> scores;  // by id (SentencePiece-style vocabularies)
  std::vector<AddedToken> added;
  bool byte_level = true;       // pieces are bytes mapped by the GPT-2 byte-to-unicode table
  bool byte_fallback = false;   // characters missing from the vocabulary become <0xXX> tokens
  bool ignore_merges = false;   // a piece that is itself a token is taken whole (Llama 3)
  bool spaces_to_metaspace = false;  // SentencePiece: ' ' becomes U+2581 before BPE
  SpacePrefix space_prefix = SpacePrefix::none;
  std::vector<PreStep> pre_steps;
  int32_t unk_id = -1;
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;
  bool add_bos = false;  // whether the model expects BOS in front of a prompt
  std::string source;    // for messages: the file it came from
};

class BpeTokenizer : public Tokenizer {
 public:
  // Validates the vocabulary (empty, merges naming unknown tokens, added tokens without a valid
  // id or content, scores not matching tokens) and throws naming `vocab.source`. A token spelled
  // twice keeps its first id (some GGUF vocabularies repeat placeholders).
  explicit BpeTokenizer(BpeVocab vocab);

  // Special tokens written in the text are recognised.
  std::vector<int32_t> encode(const std::string& text) const override;
  // parse_special = false treats special-token text as plain text (untrusted input).
  std::vector<int32_t> encode(const std::string& text, bool parse_special) const;
  std::string token_bytes(int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(bytes_.size()); }
  int32_t bos_id() const override { return vocab_.bos_id; }
  std::vector<int32_t> eos_ids() const override { return vocab_.eos_ids; }

  bool add_bos() const { return vocab_.add_bos; }
  int32_t token_id(const std::string& token) const;  // -1 when absent
  const std::string& token_text(int32_t id) const;
  const BpeVocab& vocab() const { return vocab_; }
  std::string decode(const std::vector<int32_t>& ids) const;

 private:
  void encode_segment(const std::string& text, bool at_start, std::vector<int32_t>& out) const;
  void encode_piece(const std::string& piece, std::vector<int32_t>& out) const;
  void add_symbol_ids(const std::string& symbol, std::vector<int32_t>& out) const;

  BpeVocab vocab_;
  std::unordered_map<std::string, int32_t> ids_;
  // (left id, right id) -> (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merge_ranks_;
  std::vector<std::string> bytes_;  // decoded bytes per id
  int32_t byte_token_[256];         // <0xXX> ids for byte fallback, -1 if absent
  bool added_starts_[256];          // bytes some added token starts with (cheap skip)
};

// GPT-2's reversible map from bytes to printable code points (as UTF-8).
const std::string& byte_to_unicode(uint8_t byte);

// tokenizer.json (Hugging Face `tokenizers`): model BPE; pre_tokenizer ByteLevel, Digits,
// Split with the GPT-2 / Llama 3 / Qwen2 pattern, Metaspace, or a Sequence of them; normalizer
// none, NFC (assumed already satisfied), Prepend/Replace (SentencePiece). bos/eos ids come from
// config.json / tokenizer_config.json next to it when present. Throws naming the file and field.
std::unique_ptr<BpeTokenizer> load_tokenizer_json(const std::string& path);

class GgufFile;
// tokenizer.ggml.* metadata: model "gpt2" (byte-level, merges; pre-tokenizer from
// tokenizer.ggml.pre) or "llama" (SentencePiece scores with <0xXX> byte fallback).
std::unique_ptr<BpeTokenizer> load_gguf_tokenizer(const GgufFile& file);

// The tokenizer of a model path: a .gguf file (its metadata), a directory with tokenizer.json,
// otherwise the byte tokenizer (generated models).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_path);

}  // namespace starattn
