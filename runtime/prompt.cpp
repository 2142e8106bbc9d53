#include "runtime/prompt.h"

#include <stdexcept>

#include "runtime/bpe_tokenizer.h"

namespace starattn {
namespace {

// Markers that cannot occur in template markup; they locate the user text in the rendered
// template so it can be encoded separately from the markup around it.
const std::string kDocMark = "\x01starattn-document\x01";
const std::string kQueryMark = "\x01starattn-query\x01";

std::vector<int32_t> encode_markup(const Tokenizer& t, const std::string& text) {
  return t.encode(text);  // special-token text in markup becomes its token
}

std::vector<int32_t> encode_plain(const Tokenizer& t, const std::string& text) {
  if (const auto* bpe = dynamic_cast<const BpeTokenizer*>(&t)) return bpe->encode(text, false);
  return t.encode(text);
}

void append(std::vector<int32_t>& to, const std::vector<int32_t>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

bool wants_bos(const Tokenizer& t) {
  if (const auto* bpe = dynamic_cast<const BpeTokenizer*>(&t)) return bpe->add_bos();
  return t.bos_id() >= 0;
}

// Splits `rendered` at `mark`; throws if the template dropped it.
std::pair<std::string, std::string> split_at(const std::string& rendered, const std::string& mark) {
  const size_t at = rendered.find(mark);
  if (at == std::string::npos) throw std::logic_error("chat template lost the user text");
  return {rendered.substr(0, at), rendered.substr(at + mark.size())};
}

}  // namespace

PromptIds document_prompt(const Tokenizer& tokenizer, const std::optional<ChatTemplate>& chat,
                          const std::string& document, const std::string& question) {
  PromptIds ids;
  if (!chat) {
    if (wants_bos(tokenizer)) ids.context.push_back(tokenizer.bos_id());
    append(ids.context, encode_plain(tokenizer, document));
    ids.query = encode_plain(tokenizer, question);
    return ids;
  }
  const std::string rendered =
      apply_chat_template(*chat, {{"user", kDocMark + "\n\n" + kQueryMark}}, true);
  const auto [head, rest] = split_at(rendered, kDocMark);
  const auto [middle, tail] = split_at(rest, kQueryMark);
  if (wants_bos(tokenizer) && chat->kind == ChatTemplateKind::chatml)
    ids.context.push_back(tokenizer.bos_id());
  append(ids.context, encode_markup(tokenizer, head));
  append(ids.context, encode_plain(tokenizer, document));
  append(ids.query, encode_plain(tokenizer, middle));
  append(ids.query, encode_plain(tokenizer, question));
  append(ids.query, encode_markup(tokenizer, tail));
  return ids;
}

PromptIds chat_prompt(const Tokenizer& tokenizer, const ChatTemplate& chat,
                      const std::vector<ChatMessage>& messages) {
  size_t last_user = messages.size();
  for (size_t i = messages.size(); i-- > 0;)
    if (messages[i].role == "user") {
      last_user = i;
      break;
    }
  if (last_user == messages.size())
    throw std::invalid_argument("the conversation has no user message to answer");
  // Render with markers in place of every message text so each text is encoded as plain text.
  std::vector<ChatMessage> marked = messages;
  for (size_t i = 0; i < marked.size(); ++i)
    marked[i].content = "\x01starattn-msg" + std::to_string(i) + "\x01";
  const std::string rendered = apply_chat_template(chat, marked, true);
  PromptIds ids;
  if (wants_bos(tokenizer) && chat.kind == ChatTemplateKind::chatml)
    ids.context.push_back(tokenizer.bos_id());
  std::string rest = rendered;
  for (size_t i = 0; i < marked.size(); ++i) {
    auto [before, after] = split_at(rest, marked[i].content);
    auto& into = i < last_user ? ids.context : ids.query;
    // The markup before the last user message's text (its role header) belongs to the query.
    append(i < last_user ? ids.context : ids.query, encode_markup(tokenizer, before));
    append(into, encode_plain(tokenizer, messages[i].content));
    rest = after;
  }
  append(ids.query, encode_markup(tokenizer, rest));
  return ids;
}

}  // namespace starattn
