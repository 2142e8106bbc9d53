// Pre-tokenization: cutting text into the pieces that BPE then encodes one by one.
//
// The reference tokenizers do this with regular expressions over Unicode classes; we implement
// the few patterns real models use as hand-written scanners that follow the regex semantics
// exactly (leftmost alternative wins, greedy with backtracking), so no regex engine is needed.
#pragma once

#include <string>
#include <vector>

namespace starattn {

// One pre-tokenizer step; each splits every piece it receives into smaller pieces.
enum class PreStep {
  // GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  gpt2,
  // Llama 3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
  //          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  llama3,
  // Qwen2: the Llama 3 pattern with \p{N} (one number character) instead of \p{N}{1,3}.
  qwen2,
  digits,             // Hugging Face Digits: runs of number characters become their own pieces
  digits_individual,  // Digits(individual_digits=true): each number character is its own piece
  prefix_space,       // ByteLevel(add_prefix_space=true): a piece not starting with ' ' gets one
};

const char* pre_step_name(PreStep step);

// The Split regex strings as Hugging Face tokenizer.json files spell them, mapped to our
// scanners; returns false for a pattern we do not implement.
bool pre_step_from_regex(const std::string& regex, PreStep& step);

// Applies the steps in order. Every byte of `text` ends up in exactly one piece, in order.
std::vector<std::string> pre_tokenize(const std::string& text, const std::vector<PreStep>& steps);

// One step on one piece (exposed for tests).
std::vector<std::string> split_piece(const std::string& piece, PreStep step);

}  // namespace starattn
