// Jinja's lexer as transformers configures it: text, {{ }}, {% %} and {# #} with "-" / "+"
// whitespace control, trim_blocks (the newline after a block or comment tag goes) and
// lstrip_blocks (spaces and tabs before a block or comment tag on its own line go).
#include <cstring>
#include <string>
#include <vector>

#include "runtime/jinja_ast.h"
#include "runtime/unicode.h"

namespace starattn::jinja {

std::string position_text(const std::string& source, size_t pos) {
  size_t line = 1, column = 1;
  for (size_t i = 0; i < pos && i < source.size(); ++i) {
    if (source[i] == '\n') {
      ++line;
      column = 1;
    } else if ((static_cast<unsigned char>(source[i]) & 0xC0) != 0x80) {
      ++column;
    }
  }
  return "line " + std::to_string(line) + ", column " + std::to_string(column);
}

void fail(const std::string& source, size_t pos, const std::string& problem) {
  throw Error("chat template " + position_text(source, pos) + ": " + problem);
}

std::string normalise_source(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();  // keep_trailing_newline=False
  return out;
}

namespace {

// Length of the Python whitespace code point at s[pos], 0 when there is none.
size_t space_at(const std::string& s, size_t pos) {
  if (pos >= s.size()) return 0;
  size_t len = 1;
  const uint32_t cp = decode_utf8(s, pos, len);
  return is_python_space(cp) ? len : 0;
}

size_t skip_spaces(const std::string& s, size_t pos) {
  while (size_t len = space_at(s, pos)) pos += len;
  return pos;
}

// str.rstrip() of a data segment.
void rstrip_data(std::string& text) {
  std::vector<uint32_t> cps = code_points(text);
  size_t end = cps.size();
  while (end > 0 && is_python_space(cps[end - 1])) --end;
  text = from_code_points(cps, 0, end);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class Lexer {
 public:
  explicit Lexer(const std::string& s) : s_(s) {}

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;  // the last thing consumed ended a line
    while (pos < s_.size()) {
      size_t at = find_tag(pos);
      if (at == std::string::npos) {
        push_data(s_.substr(pos), pos);
        break;
      }
      std::string data = s_.substr(pos, at - pos);
      const char kind = s_[at + 1];
      size_t p = at + 2;
      const char sign = p < s_.size() && (s_[p] == '-' || s_[p] == '+') ? s_[p] : 0;
      if (sign == '-') {
        rstrip_data(data);
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: only spaces and tabs between the line start and the tag.
        const size_t line_pos = data.rfind('\n') == std::string::npos ? 0 : data.rfind('\n') + 1;
        if ((line_pos > 0 || line_starting) &&
            data.find_first_not_of(" \t", line_pos) == std::string::npos)
          data.resize(line_pos);
      }
      push_data(data, pos);
      if (sign) ++p;
      if (kind == '#') {
        pos = end_comment(at, p);
      } else {
        pos = lex_tag(kind == '{' ? Token::Type::var_begin : Token::Type::block_begin, at, p);
      }
      line_starting = pos > 0 && s_[pos - 1] == '\n';
    }
    tokens_.push_back({Token::Type::eof, "", 0, 0, s_.size()});
    return std::move(tokens_);
  }

 private:
  size_t find_tag(size_t from) const {
    for (size_t i = s_.find('{', from); i != std::string::npos; i = s_.find('{', i + 1))
      if (i + 1 < s_.size() && std::strchr("{%#", s_[i + 1]) != nullptr) return i;
    return std::string::npos;
  }

  void push_data(const std::string& data, size_t pos) {
    if (!data.empty()) tokens_.push_back({Token::Type::data, data, 0, 0, pos});
  }

  size_t end_comment(size_t at, size_t p) {
    const size_t q = s_.find("#}", p);
    if (q == std::string::npos) fail(s_, at, "comment {# is never closed");
    if (q > p && s_[q - 1] == '-') return skip_spaces(s_, q + 2);
    if (q > p && s_[q - 1] == '+') return q + 2;
    return q + 2 < s_.size() && s_[q + 2] == '\n' ? q + 3 : q + 2;  // trim_blocks
  }

  // Tokens of one {{ }} or {% %} tag; returns the offset after its end.
  size_t lex_tag(Token::Type begin, size_t at, size_t p) {
    const bool block = begin == Token::Type::block_begin;
    tokens_.push_back({begin, "", 0, 0, at});
    int depth = 0;  // open ( [ { : their closing braces do not end the tag
    for (;;) {
      p = skip_spaces(s_, p);
      if (p >= s_.size()) fail(s_, at, block ? "tag {% is never closed" : "tag {{ is never closed");
      if (depth == 0) {
        const char* close = block ? "%}" : "}}";
        if (s_.compare(p, 3, std::string("-") + close) == 0) {
          tokens_.push_back({block ? Token::Type::block_end : Token::Type::var_end, "", 0, 0, p});
          return skip_spaces(s_, p + 3);
        }
        if (block && s_.compare(p, 3, "+%}") == 0) {
          tokens_.push_back({Token::Type::block_end, "", 0, 0, p});
          return p + 3;
        }
        if (s_.compare(p, 2, close) == 0) {
          tokens_.push_back({block ? Token::Type::block_end : Token::Type::var_end, "", 0, 0, p});
          p += 2;
          if (block && p < s_.size() && s_[p] == '\n') ++p;  // trim_blocks
          return p;
        }
      }
      p = lex_token(p, depth);
    }
  }

  size_t lex_token(size_t p, int& depth) {
    const char c = s_[p];
    if (c == '\'' || c == '"') return lex_string(p);
    if (c >= '0' && c <= '9') return lex_number(p);
    if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t e = p;
      while (e < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) ++e;
      tokens_.push_back({Token::Type::name, s_.substr(p, e - p), 0, 0, p});
      return e;
    }
    for (const char* two : {"//", "**", "==", "!=", ">=", "<="})
      if (s_.compare(p, 2, two) == 0) {
        tokens_.push_back({Token::Type::op, two, 0, 0, p});
        return p + 2;
      }
    if (std::strchr("+-/*%~[](){}><=.:|,;", c) == nullptr || c == 0)
      fail(s_, p, std::string("unexpected character '") + c + "' in a tag");
    if (c == '(' || c == '[' || c == '{') ++depth;
    if (c == ')' || c == ']' || c == '}') {
      if (depth == 0) fail(s_, p, std::string("unbalanced '") + c + "'");
      --depth;
    }
    tokens_.push_back({Token::Type::op, std::string(1, c), 0, 0, p});
    return p + 1;
  }

  size_t lex_number(size_t p) {
    size_t e = p;
    auto digits = [&] {
      while (e < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) ++e;
    };
    digits();
    bool is_float = false;
    if (e + 1 < s_.size() && s_[e] == '.' && std::isdigit(static_cast<unsigned char>(s_[e + 1]))) {
      is_float = true;
      ++e;
      digits();
    }
    if (e < s_.size() && (s_[e] == 'e' || s_[e] == 'E')) {
      size_t x = e + 1;
      if (x < s_.size() && (s_[x] == '+' || s_[x] == '-')) ++x;
      if (x < s_.size() && std::isdigit(static_cast<unsigned char>(s_[x]))) {
        is_float = true;
        e = x;
        digits();
      }
    }
    std::string text;
    for (size_t i = p; i < e; ++i)
      if (s_[i] != '_') text += s_[i];
    Token t{is_float ? Token::Type::floating : Token::Type::integer, text, 0, 0, p};
    try {
      if (is_float) t.floating = std::stod(text);
      else t.integer = std::stoll(text);
    } catch (const std::exception&) {
      fail(s_, p, "number " + text + " is out of range");
    }
    tokens_.push_back(t);
    return e;
  }

  // A quoted literal decoded as Python's "unicode-escape" does.
  size_t lex_string(size_t p) {
    const char quote = s_[p];
    std::string out;
    size_t i = p + 1;
    for (;; ++i) {
      if (i >= s_.size()) fail(s_, p, "string literal is never closed");
      const char c = s_[i];
      if (c == quote) break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (++i >= s_.size()) fail(s_, p, "string literal is never closed");
      const char e = s_[i];
      switch (e) {
        case '\n': break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': case 'u': case 'U': {
          const int n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (int k = 0; k < n; ++k) {
            const int h = i + 1 + k < s_.size() ? hex_value(s_[i + 1 + k]) : -1;
            if (h < 0) fail(s_, i - 1, std::string("truncated \\") + e + " escape");
            cp = cp * 16 + static_cast<uint32_t>(h);
          }
          i += n;
          append_utf8(out, cp);
          break;
        }
        case 'N': fail(s_, i - 1, "\\N{...} escapes are not supported");
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = 0;
            int k = 0;
            for (; k < 3 && i + k < s_.size() && s_[i + k] >= '0' && s_[i + k] <= '7'; ++k)
              cp = cp * 8 + static_cast<uint32_t>(s_[i + k] - '0');
            i += k - 1;
            append_utf8(out, cp);
          } else {
            out += '\\';  // unknown escapes stay as written
            out += e;
          }
      }
    }
    tokens_.push_back({Token::Type::string, out, 0, 0, p});
    return i + 1;
  }

  const std::string& s_;
  std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> tokenize(const std::string& source) { return Lexer(source).run(); }

}  // namespace starattn::jinja
