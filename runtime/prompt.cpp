#include "runtime/prompt.h"

#include <stdexcept>

#include "runtime/bpe_tokenizer.h"
#include "runtime/errors.h"

namespace starattn {
namespace {

// Markers that cannot occur in template markup; they locate the user text in the rendered
// template so it can be encoded separately from the markup around it.
std::string marker(size_t i) { return "\x01starattn-text" + std::to_string(i) + "\x01"; }

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

const char* kWhitespace = " \t\n\r\f\v";

// The forms a template may give a text: as is, or with surrounding whitespace trimmed.
std::vector<std::string> text_forms(const std::string& s) {
  const size_t b = s.find_first_not_of(kWhitespace);
  if (b == std::string::npos) return {s, ""};
  const size_t e = s.find_last_not_of(kWhitespace) + 1;
  return {s, s.substr(b, e - b), s.substr(0, e), s.substr(b)};
}

// A rendered prompt cut into markup and the texts between it: markup[0] text[0] markup[1] ...
// text[n-1] markup[n]; source[k] is the index of the text (message) that slot k holds.
struct Layout {
  std::vector<std::string> markup;
  std::vector<std::string> text;
  std::vector<size_t> source;
};

// Renders `texts` in place with markers, finds where the template put each (in any order, any
// number of times), and reads the text it wrote there from the rendering with the real texts.
// The template may write a text as is or trimmed; anything else cannot be split and is an error.
template <typename Render>
Layout lay_out(const std::vector<std::string>& texts, Render render) {
  std::vector<std::string> marks;
  for (size_t i = 0; i < texts.size(); ++i) marks.push_back(marker(i));
  const std::string marked = render(marks);
  const std::string real = render(texts);
  Layout l;
  size_t pos = 0;
  for (;;) {
    size_t best = std::string::npos, which = 0;
    for (size_t i = 0; i < marks.size(); ++i) {
      const size_t at = marked.find(marks[i], pos);
      if (at < best) {
        best = at;
        which = i;
      }
    }
    if (best == std::string::npos) break;
    l.markup.push_back(marked.substr(pos, best - pos));
    l.source.push_back(which);
    pos = best + marks[which].size();
  }
  l.markup.push_back(marked.substr(pos));
  // Match against the real rendering: each slot's text is one of its forms, chosen so that the
  // next markup follows it.
  size_t at = 0;
  for (size_t k = 0; k < l.source.size(); ++k) {
    at += l.markup[k].size();
    const std::string& next = l.markup[k + 1];
    bool found = false;
    for (const std::string& form : text_forms(texts[l.source[k]])) {
      if (real.compare(at, form.size(), form) != 0) continue;
      if (real.compare(at + form.size(), next.size(), next) != 0) continue;
      l.text.push_back(form);
      at += form.size();
      found = true;
      break;
    }
    if (!found)
      throw std::logic_error("the chat template changes the text of message " + std::to_string(l.source[k]) +
                             " in a way that cannot be split from its markup");
  }
  std::string rebuilt;
  for (size_t k = 0; k < l.text.size(); ++k) rebuilt += l.markup[k] + l.text[k];
  rebuilt += l.markup.back();
  if (rebuilt != real) throw std::logic_error("the chat template's markup depends on the message text; cannot split it");
  return l;
}

std::vector<ChatMessage> with_contents(std::vector<ChatMessage> messages, const std::vector<std::string>& contents) {
  for (size_t i = 0; i < messages.size(); ++i) messages[i].content = contents[i];
  return messages;
}

// BOS in front of the built-in ChatML layout when the tokenizer wants it; a model's own template
// (and the Llama 3 layout) writes BOS itself, as transformers leaves it to the template.
void maybe_bos(const Tokenizer& tokenizer, const ChatTemplate& chat, PromptIds& ids) {
  if (!chat.jinja && chat.kind == ChatTemplateKind::chatml && wants_bos(tokenizer))
    ids.context.push_back(tokenizer.bos_id());
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
  // One user turn: the document, a blank line, the question.
  const Layout l = lay_out({document, question}, [&](const std::vector<std::string>& t) {
    return apply_chat_template(*chat, {{"user", t[0] + "\n\n" + t[1]}}, true);
  });
  size_t doc_slot = l.source.size(), question_slot = l.source.size();
  for (size_t k = l.source.size(); k-- > 0;) (l.source[k] == 0 ? doc_slot : question_slot) = k;
  if (doc_slot == l.source.size() || question_slot != doc_slot + 1)
    throw std::logic_error("the chat template does not write the user's message once, in order");
  maybe_bos(tokenizer, *chat, ids);
  for (size_t k = 0; k < l.source.size(); ++k) {
    const bool context = k <= doc_slot;
    auto& into = context ? ids.context : ids.query;
    // The markup between the document and the question (the blank line) is plain text.
    append(into, k == question_slot ? encode_plain(tokenizer, l.markup[k]) : encode_markup(tokenizer, l.markup[k]));
    append(into, encode_plain(tokenizer, l.text[k]));
  }
  append(ids.query, encode_markup(tokenizer, l.markup.back()));
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
  std::vector<std::string> contents;
  for (const ChatMessage& m : messages) contents.push_back(m.content);
  const Layout l = lay_out(contents, [&](const std::vector<std::string>& t) {
    return apply_chat_template(chat, with_contents(messages, t), true);
  });
  size_t split = l.source.size();  // the first slot of the last user message
  for (size_t k = 0; k < l.source.size() && split == l.source.size(); ++k)
    if (l.source[k] == last_user) split = k;
  if (split == l.source.size()) throw std::logic_error("the chat template dropped the last user message");
  PromptIds ids;
  maybe_bos(tokenizer, chat, ids);
  for (size_t k = 0; k < l.source.size(); ++k) {
    // The markup before the last user message's text (its role header) belongs to the query.
    auto& into = k < split ? ids.context : ids.query;
    append(into, encode_markup(tokenizer, l.markup[k]));
    append(into, encode_plain(tokenizer, l.text[k]));
  }
  append(ids.query, encode_markup(tokenizer, l.markup.back()));
  return ids;
}

PromptIds resolve_prompt(const PromptSpec& p, const Tokenizer& tokenizer,
                         const std::optional<ChatTemplate>& model_chat, const ChatTemplate& chat,
                         int32_t bos_id) {
  if (p.chat) {
    if (!p.context.empty() || !p.query.empty() || p.context_is_text || p.query_is_text)
      throw Error(ErrorKind::invalid_request,
                  "a chat request gives messages only, not context or query");
    return chat_prompt(tokenizer, chat, p.messages);
  }
  if (p.context_is_text && p.query_is_text)
    return document_prompt(tokenizer, model_chat, p.context_text, p.query_text);
  PromptIds ids;
  if (p.context_is_text) {
    // Text contexts start a sequence, so they get the model's BOS like any prompt would.
    if (bos_id >= 0) ids.context.push_back(bos_id);
    append(ids.context, tokenizer.encode(p.context_text));
  } else {
    ids.context = p.context;
  }
  ids.query = p.query_is_text ? tokenizer.encode(p.query_text) : p.query;
  return ids;
}

}  // namespace starattn
