// Jinja's filters and tests that chat templates use, and the methods of str and dict they call,
// with the behaviour of Jinja 3.1 and Python 3 (transformers' tojson: json.dumps with
// ensure_ascii=False). Case mapping is ASCII-only: a non-ASCII letter in upper() / lower() /
// title() / capitalize() is an error rather than a silently different result.
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "runtime/jinja_ast.h"
#include "runtime/unicode.h"

namespace starattn::jinja {
namespace {

using std::runtime_error;

// Positional argument i, else keyword `name`, else `fallback`.
Value arg(const CallArgs& a, size_t i, const char* name, Value fallback = Value()) {
  if (i < a.positional.size()) return a.positional[i];
  for (const auto& [k, v] : a.named)
    if (k == name) return v;
  return fallback;
}

void check_args(const CallArgs& a, size_t max_positional, const std::set<std::string>& names, const std::string& what) {
  if (a.positional.size() > max_positional)
    throw runtime_error(what + " takes at most " + std::to_string(max_positional) + " arguments");
  for (const auto& [k, v] : a.named)
    if (!names.count(k)) throw runtime_error(what + " has no argument '" + k + "'");
}

std::string need_string(const Value& v, const std::string& what) {
  if (!v.is_string()) throw runtime_error(what + " needs a string, not " + v.type_name());
  return v.as_string();
}

// str() of a value as Jinja's soft_str does (undefined prints as "").
std::string text_of(const Value& v) { return to_str(v); }

enum class Case { upper, lower };

uint32_t map_case(uint32_t cp, Case c) {
  if (cp >= 128) {
    if (is_letter(cp)) throw runtime_error("changing the case of non-ASCII letters is not supported");
    return cp;
  }
  if (c == Case::upper && cp >= 'a' && cp <= 'z') return cp - 32;
  if (c == Case::lower && cp >= 'A' && cp <= 'Z') return cp + 32;
  return cp;
}

std::string convert_case(const std::string& s, Case c) {
  std::string out;
  for (const uint32_t cp : code_points(s)) append_utf8(out, map_case(cp, c));
  return out;
}

bool is_cased_letter(uint32_t cp) { return (cp < 128 && std::isalpha(static_cast<int>(cp))) || (cp >= 128 && is_letter(cp)); }

std::string capitalize(const std::string& s) {
  const std::vector<uint32_t> cps = code_points(s);
  std::string out;
  for (size_t i = 0; i < cps.size(); ++i) append_utf8(out, map_case(cps[i], i == 0 ? Case::upper : Case::lower));
  return out;
}

// Python's str.title(): a letter after a non-letter is upper case, other letters lower case.
std::string python_title(const std::string& s) {
  std::string out;
  bool previous_letter = false;
  for (const uint32_t cp : code_points(s)) {
    const bool letter = is_cased_letter(cp);
    append_utf8(out, map_case(cp, letter && !previous_letter ? Case::upper : Case::lower));
    previous_letter = letter;
  }
  return out;
}

// Jinja's title filter: words begin after runs of "-", whitespace, "(", "{", "[" or "<".
std::string jinja_title(const std::string& s) {
  const std::vector<uint32_t> cps = code_points(s);
  std::string out;
  bool word_start = true;
  for (const uint32_t cp : cps) {
    const bool separator = cp == '-' || cp == '(' || cp == '{' || cp == '[' || cp == '<' || is_python_space(cp);
    if (separator) {
      append_utf8(out, cp);
      word_start = true;
      continue;
    }
    append_utf8(out, map_case(cp, word_start ? Case::upper : Case::lower));
    word_start = false;
  }
  return out;
}

std::string replace_all(const std::string& s, const std::string& old, const std::string& with, int64_t count) {
  if (old.empty()) {  // Python inserts `with` around every character
    const std::vector<uint32_t> cps = code_points(s);
    std::string out;
    int64_t done = 0;
    for (size_t i = 0; i <= cps.size(); ++i) {
      if (count < 0 || done < count) {
        out += with;
        ++done;
      }
      if (i < cps.size()) append_utf8(out, cps[i]);
    }
    return out;
  }
  std::string out;
  size_t pos = 0;
  int64_t done = 0;
  for (size_t at; (count < 0 || done < count) && (at = s.find(old, pos)) != std::string::npos; ++done) {
    out += s.substr(pos, at - pos) + with;
    pos = at + old.size();
  }
  return out + s.substr(pos);
}

Value python_split(const std::string& s, const Value& sep, int64_t maxsplit) {
  ValueList parts;
  if (sep.is_none() || sep.is_undefined()) {  // runs of whitespace, no empty parts
    const std::vector<uint32_t> cps = code_points(s);
    size_t i = 0;
    while (i < cps.size()) {
      while (i < cps.size() && is_python_space(cps[i])) ++i;
      if (i == cps.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        size_t e = cps.size();
        while (e > i && is_python_space(cps[e - 1])) --e;
        parts.push_back(Value::string(from_code_points(cps, i, e)));
        break;
      }
      size_t e = i;
      while (e < cps.size() && !is_python_space(cps[e])) ++e;
      parts.push_back(Value::string(from_code_points(cps, i, e)));
      i = e;
    }
    return Value::list(std::move(parts));
  }
  const std::string& d = need_string(sep, "split()");
  if (d.empty()) throw runtime_error("empty separator");
  size_t pos = 0;
  for (size_t at; (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) &&
                  (at = s.find(d, pos)) != std::string::npos;) {
    parts.push_back(Value::string(s.substr(pos, at - pos)));
    pos = at + d.size();
  }
  parts.push_back(Value::string(s.substr(pos)));
  return Value::list(std::move(parts));
}

bool affix_test(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const Value& v) {
    const std::string& a = need_string(v, prefix ? "startswith()" : "endswith()");
    if (a.size() > s.size()) return false;
    return prefix ? s.compare(0, a.size(), a) == 0 : s.compare(s.size() - a.size(), a.size(), a) == 0;
  };
  if (affix.is_list()) {
    for (const Value& v : affix.as_list())
      if (one(v)) return true;
    return false;
  }
  return one(affix);
}

std::string join(const Value& seq, const std::string& sep, const Value& attribute) {
  std::string out;
  bool first = true;
  for (const Value& v : iterate(seq)) {
    if (!first) out += sep;
    first = false;
    out += text_of(attribute.is_undefined() || attribute.is_none() ? v : get_attr(v, text_of(attribute)));
  }
  return out;
}

// Python's str.splitlines().
std::vector<std::string> split_lines(const std::string& s) {
  const std::vector<uint32_t> cps = code_points(s);
  std::vector<std::string> lines;
  size_t begin = 0;
  for (size_t i = 0; i < cps.size(); ++i) {
    const uint32_t c = cps[i];
    const bool brk = c == '\n' || c == '\r' || c == 0x0b || c == 0x0c || c == 0x1c || c == 0x1d ||
                     c == 0x1e || c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!brk) continue;
    lines.push_back(from_code_points(cps, begin, i));
    if (c == '\r' && i + 1 < cps.size() && cps[i + 1] == '\n') ++i;
    begin = i + 1;
  }
  if (begin < cps.size()) lines.push_back(from_code_points(cps, begin, cps.size()));
  return lines;
}

std::string indent(const std::string& text, const Value& width, bool first, bool blank) {
  const std::string pad = width.is_string() ? width.as_string() : std::string(static_cast<size_t>(std::max<int64_t>(0, width.as_int())), ' ');
  const std::vector<std::string> lines = split_lines(text + "\n");
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i > 0) out += "\n";
    out += (i > 0 && (blank || !lines[i].empty()) ? pad : "") + lines[i];
  }
  return first ? pad + out : out;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// select / reject / selectattr / rejectattr: the test named in args[first] (with the rest as
// its arguments) applied to each item (or its attribute).
Value filter_items(const Value& seq, const CallArgs& a, bool by_attribute, bool keep) {
  size_t next = 0;
  std::string attribute;
  if (by_attribute) attribute = need_string(arg(a, next++, "attribute"), "selectattr()");
  const Value test = arg(a, next++, "test");
  if (!test.is_undefined() && !test.is_string()) throw runtime_error("the test name must be a string");
  CallArgs test_args;
  for (size_t i = next; i < a.positional.size(); ++i) test_args.positional.push_back(a.positional[i]);
  if (!test.is_undefined() && !is_test(test.as_string())) throw runtime_error("no test named '" + test.as_string() + "'");
  ValueList out;
  for (const Value& item : iterate(seq)) {
    const Value v = by_attribute ? get_attr(item, attribute) : item;
    const bool pass = test.is_undefined() ? v.truthy() : apply_test(test.as_string(), v, test_args);
    if (pass == keep) out.push_back(item);
  }
  return Value::list(std::move(out));
}

Value map_items(const Value& seq, const CallArgs& a) {
  ValueList out;
  const Value attribute = arg(a, 99, "attribute");
  if (!attribute.is_undefined()) {
    const Value fallback = arg(a, 99, "default");
    for (const Value& item : iterate(seq)) {
      Value v = get_attr(item, text_of(attribute));
      out.push_back(v.is_undefined() && !fallback.is_undefined() ? fallback : v);
    }
    return Value::list(std::move(out));
  }
  if (a.positional.empty() || !a.positional[0].is_string()) throw runtime_error("map() needs a filter name or attribute=");
  const std::string name = a.positional[0].as_string();
  if (!is_filter(name)) throw runtime_error("no filter named '" + name + "'");
  CallArgs rest;
  rest.positional.assign(a.positional.begin() + 1, a.positional.end());
  rest.named = a.named;
  for (const Value& item : iterate(seq)) out.push_back(apply_filter(name, item, rest));
  return Value::list(std::move(out));
}

Value items_of(const Value& v) {
  if (v.is_undefined()) return Value::list({});
  if (!v.is_dict()) throw runtime_error("can only get item pairs from a mapping, not " + v.type_name());
  ValueList out;
  for (const auto& [k, item] : v.as_dict().items) out.push_back(Value::list({Value::string(k), item}));
  return Value::list(std::move(out));
}

const std::set<std::string>& filter_names() {
  static const std::set<std::string> names = {
      "abs", "attr", "capitalize", "count", "d", "default", "dictsort", "e", "escape", "first",
      "float", "indent", "int", "items", "join", "last", "length", "list", "lower", "map",
      "reject", "rejectattr", "replace", "reverse", "safe", "select", "selectattr", "string",
      "sum", "title", "tojson", "trim", "upper"};
  return names;
}

const std::set<std::string>& test_names() {
  static const std::set<std::string> names = {
      "boolean", "callable", "defined", "divisibleby", "eq", "equalto", "==", "escaped", "even",
      "false", "filter", "float", "ge", ">=", "gt", "greaterthan", ">", "in", "integer",
      "iterable", "le", "<=", "lower", "lt", "lessthan", "<", "mapping", "ne", "!=", "none",
      "number", "odd", "sameas", "sequence", "string", "test", "true", "undefined", "upper"};
  return names;
}

}  // namespace

bool is_filter(const std::string& name) { return filter_names().count(name) > 0; }
bool is_test(const std::string& name) { return test_names().count(name) > 0; }

Value apply_filter(const std::string& name, const Value& in, const CallArgs& a) {
  if (name == "safe") return in;
  if (name == "string") return Value::string(text_of(in));
  if (name == "trim") return Value::string(python_strip(text_of(in), true, true, arg(a, 0, "chars", Value::none())));
  if (name == "upper") return Value::string(convert_case(text_of(in), Case::upper));
  if (name == "lower") return Value::string(convert_case(text_of(in), Case::lower));
  if (name == "capitalize") return Value::string(capitalize(text_of(in)));
  if (name == "title") return Value::string(jinja_title(text_of(in)));
  if (name == "length" || name == "count") return Value::integer(static_cast<int64_t>(length_of(in)));
  if (name == "e" || name == "escape") return Value::string(html_escape(text_of(in)));
  if (name == "default" || name == "d") {
    const bool boolean = arg(a, 1, "boolean", Value::boolean(false)).truthy();
    if (in.is_undefined() || (boolean && !in.truthy())) return arg(a, 0, "default_value", Value::string(""));
    return in;
  }
  if (name == "tojson") {
    check_args(a, 1, {"indent", "sort_keys", "ensure_ascii", "separators"}, "tojson");
    const Value ind = arg(a, 0, "indent", Value::none());
    if (arg(a, 99, "ensure_ascii", Value::boolean(false)).truthy()) throw runtime_error("ensure_ascii=True is not supported");
    if (!arg(a, 99, "separators", Value::none()).is_none()) throw runtime_error("separators= is not supported");
    if (!ind.is_none() && ind.kind() != Value::Kind::integer) throw runtime_error("indent must be an integer");
    return Value::string(to_json(in, ind.is_none() ? -1 : static_cast<int>(ind.as_int()),
                                 arg(a, 99, "sort_keys", Value::boolean(false)).truthy()));
  }
  if (name == "join") return Value::string(join(in, text_of(arg(a, 0, "d", Value::string(""))), arg(a, 1, "attribute")));
  if (name == "first" || name == "last") {
    const std::vector<Value> items = iterate(in);
    if (items.empty()) return Value::undefined("no " + name + " item");
    return name == "first" ? items.front() : items.back();
  }
  if (name == "list") return Value::list(iterate(in));
  if (name == "items") return items_of(in);
  if (name == "dictsort") {
    if (!in.is_dict()) throw runtime_error("dictsort needs a mapping, not " + in.type_name());
    ValueList pairs = items_of(in).as_list();
    const bool by_value = text_of(arg(a, 1, "by", Value::string("key"))) == "value";
    std::stable_sort(pairs.begin(), pairs.end(), [&](const Value& x, const Value& y) {
      return compare_op("<", x.as_list()[by_value ? 1 : 0], y.as_list()[by_value ? 1 : 0]);
    });
    if (arg(a, 2, "reverse", Value::boolean(false)).truthy()) std::reverse(pairs.begin(), pairs.end());
    return Value::list(std::move(pairs));
  }
  if (name == "reverse") {
    if (in.is_string()) {
      std::vector<uint32_t> cps = code_points(in.as_string());
      std::reverse(cps.begin(), cps.end());
      return Value::string(from_code_points(cps, 0, cps.size()));
    }
    std::vector<Value> items = iterate(in);
    std::reverse(items.begin(), items.end());
    return Value::list(std::move(items));
  }
  if (name == "replace") {
    const Value count = arg(a, 2, "count", Value::none());
    return Value::string(replace_all(text_of(in), text_of(arg(a, 0, "old")), text_of(arg(a, 1, "new")),
                                     count.is_none() ? -1 : count.as_int()));
  }
  if (name == "indent")
    return Value::string(indent(text_of(in), arg(a, 0, "width", Value::integer(4)),
                                arg(a, 1, "first", Value::boolean(false)).truthy(),
                                arg(a, 2, "blank", Value::boolean(false)).truthy()));
  if (name == "select" || name == "reject") return filter_items(in, a, false, name == "select");
  if (name == "selectattr" || name == "rejectattr") return filter_items(in, a, true, name == "selectattr");
  if (name == "map") return map_items(in, a);
  if (name == "attr") return get_attr(in, text_of(arg(a, 0, "name")));
  if (name == "abs") {
    if (!in.is_number()) throw runtime_error("bad operand type for abs(): " + in.type_name());
    if (in.kind() == Value::Kind::floating) return Value::number(std::abs(in.as_double()));
    return Value::integer(std::abs(in.as_int()));
  }
  if (name == "int" || name == "float") {
    const Value fallback = arg(a, 0, "default", name == "int" ? Value::integer(0) : Value::number(0));
    double d;
    if (in.is_number()) {
      d = in.as_double();
    } else if (in.is_string()) {
      try {
        size_t used = 0;
        const std::string t = python_strip(in.as_string(), true, true, Value::none());
        d = std::stod(t, &used);
        if (used != t.size()) return fallback;
      } catch (const std::exception&) {
        return fallback;
      }
    } else {
      return fallback;
    }
    if (name == "float") return Value::number(d);
    if (in.kind() == Value::Kind::integer) return in;
    return Value::integer(static_cast<int64_t>(d));
  }
  if (name == "sum") {
    Value total = arg(a, 1, "start", Value::integer(0));
    const Value attribute = arg(a, 0, "attribute");
    for (const Value& v : iterate(in))
      total = binary_op("+", total, attribute.is_undefined() ? v : get_attr(v, text_of(attribute)));
    return total;
  }
  throw runtime_error("no filter named '" + name + "'");
}

bool apply_test(const std::string& name, const Value& v, const CallArgs& a) {
  const Value other = arg(a, 0, "value");
  using K = Value::Kind;
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
  if (name == "sequence") return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
  if (name == "number") return v.is_number();
  if (name == "integer") return v.kind() == K::integer;
  if (name == "float") return v.kind() == K::floating;
  if (name == "boolean") return v.kind() == K::boolean;
  if (name == "true") return v.kind() == K::boolean && v.as_bool();
  if (name == "false") return v.kind() == K::boolean && !v.as_bool();
  if (name == "callable") return v.kind() == K::function;
  if (name == "escaped") return false;
  if (name == "filter") return v.is_string() && is_filter(v.as_string());
  if (name == "test") return v.is_string() && is_test(v.as_string());
  if (name == "lower") return text_of(v) == convert_case(text_of(v), Case::lower);
  if (name == "upper") return text_of(v) == convert_case(text_of(v), Case::upper);
  if (name == "odd" || name == "even") {
    if (v.kind() != K::integer && v.kind() != K::boolean) throw runtime_error(name + " needs an integer");
    return (((v.as_int() % 2) + 2) % 2 == 1) == (name == "odd");
  }
  if (name == "divisibleby") {
    if (!v.is_number() || !other.is_number()) throw runtime_error("divisibleby needs numbers");
    return binary_op("%", v, other).as_double() == 0;
  }
  if (name == "sameas") return values_equal(v, other) && v.kind() == other.kind();
  if (name == "eq" || name == "equalto" || name == "==") return compare_op("==", v, other);
  if (name == "ne" || name == "!=") return compare_op("!=", v, other);
  if (name == "lt" || name == "lessthan" || name == "<") return compare_op("<", v, other);
  if (name == "le" || name == "<=") return compare_op("<=", v, other);
  if (name == "gt" || name == "greaterthan" || name == ">") return compare_op(">", v, other);
  if (name == "ge" || name == ">=") return compare_op(">=", v, other);
  if (name == "in") return contains(other, v);
  throw runtime_error("no test named '" + name + "'");
}

Value call_method(const Value& obj, const std::string& name, const CallArgs& a, bool& found) {
  found = true;
  if (obj.is_string()) {
    const std::string& s = obj.as_string();
    if (name == "strip" || name == "lstrip" || name == "rstrip")
      return Value::string(python_strip(s, name != "rstrip", name != "lstrip", arg(a, 0, "chars", Value::none())));
    if (name == "split") {
      const Value maxsplit = arg(a, 1, "maxsplit", Value::integer(-1));
      return python_split(s, arg(a, 0, "sep", Value::none()), maxsplit.as_int());
    }
    if (name == "startswith" || name == "endswith") {
      check_args(a, 1, {}, name + "()");
      return Value::boolean(affix_test(s, arg(a, 0, "prefix"), name == "startswith"));
    }
    if (name == "replace") {
      const std::string& old = need_string(arg(a, 0, "old"), "replace()");
      const std::string& with = need_string(arg(a, 1, "new"), "replace()");
      return Value::string(replace_all(s, old, with, arg(a, 2, "count", Value::integer(-1)).as_int()));
    }
    if (name == "upper") return Value::string(convert_case(s, Case::upper));
    if (name == "lower") return Value::string(convert_case(s, Case::lower));
    if (name == "title") return Value::string(python_title(s));
    if (name == "capitalize") return Value::string(capitalize(s));
    if (name == "join") return Value::string(join(arg(a, 0, "iterable"), s, Value()));
    if (name == "find" || name == "count") {
      const std::string& sub = need_string(arg(a, 0, "sub"), name + "()");
      if (name == "count") {
        if (sub.empty()) return Value::integer(static_cast<int64_t>(code_points(s).size()) + 1);
        int64_t n = 0;
        for (size_t at = s.find(sub); at != std::string::npos; at = s.find(sub, at + sub.size())) ++n;
        return Value::integer(n);
      }
      const size_t at = s.find(sub);
      return Value::integer(at == std::string::npos ? -1 : static_cast<int64_t>(code_points(s.substr(0, at)).size()));
    }
  } else if (obj.is_dict()) {
    const ValueDict& d = obj.as_dict();
    if (name == "items") return items_of(obj);
    if (name == "keys") return Value::list(iterate(obj));
    if (name == "values") {
      ValueList out;
      for (const auto& [k, v] : d.items) out.push_back(v);
      return Value::list(std::move(out));
    }
    if (name == "get") {
      const Value key = arg(a, 0, "key");
      const Value* v = key.is_string() ? d.find(key.as_string()) : nullptr;
      return v ? *v : arg(a, 1, "default", Value::none());
    }
  }
  static const std::set<std::string> mutators = {"append", "extend", "insert", "pop", "remove", "clear",
                                                 "update", "setdefault", "popitem", "sort", "reverse"};
  if (mutators.count(name))
    throw runtime_error("access to attribute '" + name + "' of '" + obj.type_name() + "' object is unsafe.");
  found = false;
  return Value();
}

}  // namespace starattn::jinja
