// Varied filler text for the haystacks of the RULER-style tasks. One repeated sentence would let a
// model (or blockwise attention) learn to skip the haystack trivially; RULER uses essays. We
// generate English-like prose instead: paragraphs on one of several topics (each with its own
// people, actions, things, places and events), built from many sentence patterns. The text has
// no digits and never mentions "magic", "special", "number" or "VAR", so the needles are the only
// such lines in a haystack.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "eval/rng.h"

namespace starattn::eval {

class FillerText {
 public:
  explicit FillerText(uint64_t seed);
  // The next sentence, with its separator: " " inside a paragraph, "\n\n" at a paragraph's end.
  std::string next();

 private:
  Rng rng_;
  size_t topic_ = 0;
  int left_in_paragraph_ = 0;
};

// `count` sentences of one seeded stream.
std::vector<std::string> filler_sentences(uint64_t seed, size_t count);

// Distinct lowercase single words drawn from the filler vocabularies (for common-word tasks).
// No word is a substring of another, so finding one word in an answer never counts another.
const std::vector<std::string>& filler_words();

// Adjectives and nouns for needle keys ("quiet-lantern").
const std::vector<std::string>& key_adjectives();
const std::vector<std::string>& key_nouns();

// "a" or "an" for the word that follows.
const char* article(const std::string& next_word);

}  // namespace starattn::eval
