// Lays out text requests as the two halves Star Attention needs: the context (encoded in
// phase 1, blockwise) and the query (phase 2: the question and the assistant's header).
// The chat template (the model's own Jinja template, or a built-in layout) is rendered once with
// markers in place of the texts, to find its markup, and once with the texts, to find how it
// writes each text (as is, or with surrounding whitespace trimmed); texts are then encoded as
// plain text and markup with its special tokens. A template that rewrites texts in any other way
// cannot be split and throws std::logic_error.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "runtime/chat_template.h"
#include "runtime/request.h"
#include "runtime/tokenizer.h"

namespace starattn {

struct PromptIds {
  std::vector<int32_t> context;
  std::vector<int32_t> query;
};

// Document question answering. With a chat template the prompt is one user turn holding the
// document, a blank line and the question, followed by the assistant header; everything up to
// the end of the document is the context, the rest the query. Without one (byte-level models)
// the context is BOS + the document and the query the question. The document and the question
// are encoded as plain text (special-token text in them stays text); template markup is encoded
// with its special tokens. Each half is tokenized on its own, so the ids at the seam can differ
// from tokenizing the joined string (star and full runs see the same ids either way).
PromptIds document_prompt(const Tokenizer& tokenizer, const std::optional<ChatTemplate>& chat,
                          const std::string& document, const std::string& question);

// A chat: every message before the last user message is context (the system prompt, earlier
// turns, documents pasted by the user); the last user message and the assistant header are the
// query. Throws std::invalid_argument when there is no user message.
PromptIds chat_prompt(const Tokenizer& tokenizer, const ChatTemplate& chat,
                      const std::vector<ChatMessage>& messages);

// A request's prompt as ids, laid out the same way on every path (the Engine, the scheduler):
// a chat with chat_prompt() over `chat`; a context text with a query text with
// document_prompt() over the model's own template `model_chat`; a context text alone as BOS
// (`bos_id`, when >= 0) + its tokens; a query text alone as its tokens; ids as they are.
// Throws Error(invalid_request) for a chat that also gives a context or a query.
PromptIds resolve_prompt(const PromptSpec& prompt, const Tokenizer& tokenizer,
                         const std::optional<ChatTemplate>& model_chat, const ChatTemplate& chat,
                         int32_t bos_id);

}  // namespace starattn
