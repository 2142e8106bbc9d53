// Values with Python's semantics: str() / repr() / json.dumps, truthiness, equality and order,
// + - * / // % ** and ~, `in`, iteration, subscripts and slices (code points for strings), and
// Jinja's undefined (empty when printed or iterated, an error when used any further).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "runtime/jinja_ast.h"
#include "runtime/unicode.h"

namespace starattn::jinja {

const Value* ValueDict::find(const std::string& key) const {
  for (const auto& [k, v] : items)
    if (k == key) return &v;
  return nullptr;
}

void ValueDict::set(const std::string& key, Value value) {
  for (auto& [k, v] : items)
    if (k == key) {
      v = std::move(value);
      return;
    }
  items.emplace_back(key, std::move(value));
}

Value Value::undefined(std::string hint) {
  Value v;
  v.s_ = std::move(hint);
  return v;
}
Value Value::none() {
  Value v;
  v.kind_ = Kind::none;
  return v;
}
Value Value::boolean(bool b) {
  Value v;
  v.kind_ = Kind::boolean;
  v.b_ = b;
  return v;
}
Value Value::integer(int64_t i) {
  Value v;
  v.kind_ = Kind::integer;
  v.i_ = i;
  return v;
}
Value Value::number(double d) {
  Value v;
  v.kind_ = Kind::floating;
  v.f_ = d;
  return v;
}
Value Value::string(std::string s) {
  Value v;
  v.kind_ = Kind::string;
  v.s_ = std::move(s);
  return v;
}
Value Value::list(ValueList items) {
  Value v;
  v.kind_ = Kind::list;
  v.list_ = std::make_shared<const ValueList>(std::move(items));
  return v;
}
Value Value::dict(ValueDict items) {
  Value v;
  v.kind_ = Kind::dict;
  v.dict_ = std::make_shared<ValueDict>(std::move(items));
  return v;
}
Value Value::namespace_object(ValueDict attributes) {
  Value v = dict(std::move(attributes));
  v.kind_ = Kind::ns;
  return v;
}
Value Value::function(std::string name, Function f) {
  Value v;
  v.kind_ = Kind::function;
  v.s_ = std::move(name);
  v.function_ = std::make_shared<const Function>(std::move(f));
  return v;
}

double Value::as_double() const {
  if (kind_ == Kind::floating) return f_;
  return static_cast<double>(as_int());
}

bool Value::truthy() const {
  switch (kind_) {
    case Kind::undefined: case Kind::none: return false;
    case Kind::boolean: return b_;
    case Kind::integer: return i_ != 0;
    case Kind::floating: return f_ != 0;
    case Kind::string: return !s_.empty();
    case Kind::list: return !list_->empty();
    case Kind::dict: return !dict_->items.empty();
    case Kind::ns: case Kind::function: return true;
  }
  return false;
}

std::string Value::type_name() const {
  switch (kind_) {
    case Kind::undefined: return "undefined";
    case Kind::none: return "NoneType";
    case Kind::boolean: return "bool";
    case Kind::integer: return "int";
    case Kind::floating: return "float";
    case Kind::string: return "str";
    case Kind::list: return "list";
    case Kind::dict: return "dict";
    case Kind::ns: return "Namespace";
    case Kind::function: return "function";
  }
  return "?";
}

namespace {

// Python's repr() of a float: the shortest digits that read back to the same double, fixed
// notation for exponents -4..15, otherwise d.ddde+XX.
std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*e", precision - 1, d);
    if (std::strtod(buf, nullptr) == d) break;
  }
  std::string s = buf;
  std::string sign;
  if (s[0] == '-') {
    sign = "-";
    s.erase(0, 1);
  }
  const size_t e = s.find('e');
  const int exponent = std::stoi(s.substr(e + 1));
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) return sign + "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
    const size_t int_len = static_cast<size_t>(exponent) + 1;
    if (digits.size() <= int_len) return sign + digits + std::string(int_len - digits.size(), '0') + ".0";
    return sign + digits.substr(0, int_len) + "." + digits.substr(int_len);
  }
  std::string mantissa = digits.substr(0, 1);
  if (digits.size() > 1) mantissa += "." + digits.substr(1);
  char exp[16];
  std::snprintf(exp, sizeof(exp), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return sign + mantissa + exp;
}

std::string string_repr(const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const char quote = has_single && s.find('"') == std::string::npos ? '"' : '\'';
  std::string out(1, quote);
  for (const char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (c == quote || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + quote;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (u < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", u);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

void json_into(std::string& out, const Value& v, int indent, bool sort_keys, int depth) {
  const std::string newline = indent >= 0 ? "\n" + std::string(static_cast<size_t>(indent * (depth + 1)), ' ') : "";
  const std::string close = indent >= 0 ? "\n" + std::string(static_cast<size_t>(indent * depth), ' ') : "";
  const std::string comma = indent >= 0 ? "," : ", ";
  switch (v.kind()) {
    case Value::Kind::none: out += "null"; return;
    case Value::Kind::boolean: out += v.as_bool() ? "true" : "false"; return;
    case Value::Kind::integer: out += std::to_string(v.as_int()); return;
    case Value::Kind::floating: {
      const double d = v.as_double();
      out += std::isnan(d) ? "NaN" : std::isinf(d) ? (d < 0 ? "-Infinity" : "Infinity") : float_repr(d);
      return;
    }
    case Value::Kind::string: out += json_string(v.as_string()); return;
    case Value::Kind::list: {
      if (v.as_list().empty()) {
        out += "[]";
        return;
      }
      out += "[";
      bool first = true;
      for (const Value& item : v.as_list()) {
        out += first ? newline : comma + newline;
        first = false;
        json_into(out, item, indent, sort_keys, depth + 1);
      }
      out += close + "]";
      return;
    }
    case Value::Kind::dict: {
      auto items = v.as_dict().items;
      if (items.empty()) {
        out += "{}";
        return;
      }
      if (sort_keys)
        std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      out += "{";
      bool first = true;
      for (const auto& [k, item] : items) {
        out += first ? newline : comma + newline;
        first = false;
        out += json_string(k) + ": ";
        json_into(out, item, indent, sort_keys, depth + 1);
      }
      out += close + "}";
      return;
    }
    default:
      throw std::runtime_error("Object of type " + v.type_name() + " is not JSON serializable");
  }
}

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

[[noreturn]] void type_error(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) throw std::runtime_error(a.as_string());
  if (b.is_undefined()) throw std::runtime_error(b.as_string());
  throw std::runtime_error("unsupported operand types for " + op + ": '" + a.type_name() + "' and '" + b.type_name() + "'");
}

// Python's index normalisation: negative counts from the end; false when out of range.
bool normalise_index(int64_t& i, size_t size) {
  if (i < 0) i += static_cast<int64_t>(size);
  return i >= 0 && i < static_cast<int64_t>(size);
}

}  // namespace

std::string to_str(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined: return "";
    case Value::Kind::none: return "None";
    case Value::Kind::boolean: return v.as_bool() ? "True" : "False";
    case Value::Kind::integer: return std::to_string(v.as_int());
    case Value::Kind::floating: return float_repr(v.as_double());
    case Value::Kind::string: return v.as_string();
    default: return to_repr(v);
  }
}

std::string to_repr(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined: return "Undefined";
    case Value::Kind::string: return string_repr(v.as_string());
    case Value::Kind::list: {
      std::string out = "[";
      for (size_t i = 0; i < v.as_list().size(); ++i) out += (i ? ", " : "") + to_repr(v.as_list()[i]);
      return out + "]";
    }
    case Value::Kind::dict: {
      std::string out = "{";
      bool first = true;
      for (const auto& [k, item] : v.as_dict().items) {
        out += (first ? "" : ", ") + string_repr(k) + ": " + to_repr(item);
        first = false;
      }
      return out + "}";
    }
    case Value::Kind::ns: return "<Namespace>";
    case Value::Kind::function: return "<function " + v.function_name() + ">";
    default: return to_str(v);
  }
}

std::string to_json(const Value& v, int indent, bool sort_keys) {
  std::string out;
  json_into(out, v, indent, sort_keys, 0);
  return out;
}

bool values_equal(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind() == Value::Kind::floating || b.kind() == Value::Kind::floating) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.kind() != b.kind()) return false;
  switch (a.kind()) {
    case Value::Kind::undefined: case Value::Kind::none: return true;
    case Value::Kind::string: return a.as_string() == b.as_string();
    case Value::Kind::list: {
      const ValueList &x = a.as_list(), &y = b.as_list();
      if (x.size() != y.size()) return false;
      for (size_t i = 0; i < x.size(); ++i)
        if (!values_equal(x[i], y[i])) return false;
      return true;
    }
    case Value::Kind::dict: {
      const ValueDict &x = a.as_dict(), &y = b.as_dict();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& [k, item] : x.items) {
        const Value* other = y.find(k);
        if (!other || !values_equal(item, *other)) return false;
      }
      return true;
    }
    case Value::Kind::ns: return &a.namespace_attributes() == &b.namespace_attributes();
    default: return false;
  }
}

std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    size_t len = 1;
    out.push_back(decode_utf8(s, i, len));
    i += len ? len : 1;
  }
  return out;
}

std::string from_code_points(const std::vector<uint32_t>& cps, size_t begin, size_t end) {
  std::string out;
  for (size_t i = begin; i < end && i < cps.size(); ++i) append_utf8(out, cps[i]);
  return out;
}

bool is_python_space(uint32_t cp) { return (cp >= 0x1c && cp <= 0x1f) || is_white_space(cp); }

std::string python_strip(const std::string& s, bool left, bool right, const Value& chars) {
  const std::vector<uint32_t> cps = code_points(s);
  std::vector<uint32_t> set;
  const bool custom = !chars.is_none() && !chars.is_undefined();
  if (custom) {
    if (!chars.is_string()) throw std::runtime_error("strip arg must be None or str, not " + chars.type_name());
    set = code_points(chars.as_string());
  }
  auto strippable = [&](uint32_t cp) {
    return custom ? std::find(set.begin(), set.end(), cp) != set.end() : is_python_space(cp);
  };
  size_t b = 0, e = cps.size();
  while (left && b < e && strippable(cps[b])) ++b;
  while (right && e > b && strippable(cps[e - 1])) --e;
  return from_code_points(cps, b, e);
}

Value binary_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") return Value::string(to_str(a) + to_str(b));
  if (op == "+") {
    if (a.is_string() && b.is_string()) return Value::string(a.as_string() + b.as_string());
    if (a.is_list() && b.is_list()) {
      ValueList out = a.as_list();
      out.insert(out.end(), b.as_list().begin(), b.as_list().end());
      return Value::list(std::move(out));
    }
  }
  if (op == "*" && (a.is_string() || a.is_list() || b.is_string() || b.is_list())) {
    const Value& seq = a.is_number() ? b : a;
    const Value& count = a.is_number() ? a : b;
    if (!count.is_number() || count.kind() == Value::Kind::floating) type_error(op, a, b);
    const int64_t n = std::min<int64_t>(count.as_int(), 100000);
    if (seq.is_string()) {
      std::string out;
      for (int64_t i = 0; i < n; ++i) out += seq.as_string();
      return Value::string(out);
    }
    ValueList out;
    for (int64_t i = 0; i < n; ++i) out.insert(out.end(), seq.as_list().begin(), seq.as_list().end());
    return Value::list(std::move(out));
  }
  if (!a.is_number() || !b.is_number()) type_error(op, a, b);
  const bool floating = a.kind() == Value::Kind::floating || b.kind() == Value::Kind::floating;
  if (op == "/") {
    if (b.as_double() == 0) throw std::runtime_error("division by zero");
    return Value::number(a.as_double() / b.as_double());
  }
  if (floating) {
    const double x = a.as_double(), y = b.as_double();
    if (op == "+") return Value::number(x + y);
    if (op == "-") return Value::number(x - y);
    if (op == "*") return Value::number(x * y);
    if (op == "**") return Value::number(std::pow(x, y));
    if (y == 0) throw std::runtime_error("float division by zero");
    if (op == "//") return Value::number(std::floor(x / y));
    if (op == "%") {
      double r = std::fmod(x, y);
      if (r != 0 && ((r < 0) != (y < 0))) r += y;
      return Value::number(r);
    }
  } else {
    const int64_t x = a.as_int(), y = b.as_int();
    if (op == "+") return Value::integer(x + y);
    if (op == "-") return Value::integer(x - y);
    if (op == "*") return Value::integer(x * y);
    if (op == "**") {
      if (y < 0) return Value::number(std::pow(static_cast<double>(x), static_cast<double>(y)));
      int64_t r = 1;
      for (int64_t i = 0; i < y; ++i) r *= x;
      return Value::integer(r);
    }
    if (y == 0) throw std::runtime_error("integer division or modulo by zero");
    if (op == "//") return Value::integer(floor_div(x, y));
    if (op == "%") return Value::integer(x - floor_div(x, y) * y);
  }
  throw std::runtime_error("unknown operator " + op);
}

bool compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return values_equal(a, b);
  if (op == "!=") return !values_equal(a, b);
  if (op == "in") return contains(b, a);
  if (op == "not in") return !contains(b, a);
  int order;
  if (a.is_number() && b.is_number()) {
    const double x = a.as_double(), y = b.as_double();
    order = x < y ? -1 : x > y ? 1 : 0;
  } else if (a.is_string() && b.is_string()) {
    const int c = a.as_string().compare(b.as_string());  // UTF-8 byte order is code point order
    order = c < 0 ? -1 : c > 0 ? 1 : 0;
  } else if (a.is_list() && b.is_list()) {
    const ValueList &x = a.as_list(), &y = b.as_list();
    size_t i = 0;
    while (i < x.size() && i < y.size() && values_equal(x[i], y[i])) ++i;
    if (i < x.size() && i < y.size()) return compare_op(op, x[i], y[i]);
    order = x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
  } else {
    type_error(op, a, b);
  }
  if (op == "<") return order < 0;
  if (op == "<=") return order <= 0;
  if (op == ">") return order > 0;
  if (op == ">=") return order >= 0;
  throw std::runtime_error("unknown comparison " + op);
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind()) {
    case Value::Kind::undefined: return false;
    case Value::Kind::string:
      if (!item.is_string()) throw std::runtime_error("'in <string>' requires string as left operand, not " + item.type_name());
      return container.as_string().find(item.as_string()) != std::string::npos;
    case Value::Kind::list:
      for (const Value& v : container.as_list())
        if (values_equal(v, item)) return true;
      return false;
    case Value::Kind::dict:
      return item.is_string() && container.as_dict().find(item.as_string()) != nullptr;
    default:
      throw std::runtime_error("argument of type '" + container.type_name() + "' is not iterable");
  }
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined: return {};
    case Value::Kind::list: return v.as_list();
    case Value::Kind::dict: {
      std::vector<Value> keys;
      for (const auto& [k, item] : v.as_dict().items) keys.push_back(Value::string(k));
      return keys;
    }
    case Value::Kind::string: {
      std::vector<Value> chars;
      const std::vector<uint32_t> cps = code_points(v.as_string());
      for (size_t i = 0; i < cps.size(); ++i) chars.push_back(Value::string(from_code_points(cps, i, i + 1)));
      return chars;
    }
    default: throw std::runtime_error("'" + v.type_name() + "' object is not iterable");
  }
}

size_t length_of(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::undefined: return 0;
    case Value::Kind::string: return code_points(v.as_string()).size();
    case Value::Kind::list: return v.as_list().size();
    case Value::Kind::dict: return v.as_dict().items.size();
    default: throw std::runtime_error("object of type '" + v.type_name() + "' has no len()");
  }
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind()) {
    case Value::Kind::undefined: throw std::runtime_error(obj.as_string());
    case Value::Kind::dict: case Value::Kind::ns:
      if (key.is_string()) {
        if (const Value* v = obj.as_dict().find(key.as_string())) return *v;
      }
      return Value::undefined(obj.type_name() + " object has no element " + to_repr(key));
    case Value::Kind::list: case Value::Kind::string: {
      if (key.is_string() && obj.is_string()) return Value::undefined("str object has no attribute " + key.as_string());
      if (key.kind() != Value::Kind::integer && key.kind() != Value::Kind::boolean)
        return Value::undefined(obj.type_name() + " object has no element " + to_repr(key));
      int64_t i = key.as_int();
      if (obj.is_list()) {
        if (!normalise_index(i, obj.as_list().size())) return Value::undefined("list object has no element " + to_repr(key));
        return obj.as_list()[static_cast<size_t>(i)];
      }
      const std::vector<uint32_t> cps = code_points(obj.as_string());
      if (!normalise_index(i, cps.size())) return Value::undefined("str object has no element " + to_repr(key));
      return Value::string(from_code_points(cps, static_cast<size_t>(i), static_cast<size_t>(i) + 1));
    }
    default:
      return Value::undefined(obj.type_name() + " object has no element " + to_repr(key));
  }
}

Value get_attr(const Value& obj, const std::string& name) {
  if (obj.is_undefined()) throw std::runtime_error(obj.as_string());
  if (obj.is_dict() || obj.kind() == Value::Kind::ns) {
    if (const Value* v = obj.as_dict().find(name)) return *v;
  }
  return Value::undefined(obj.type_name() + " object has no attribute '" + name + "'");
}

Value slice_of(const Value& obj, const Value& start, const Value& stop, const Value& step) {
  if (obj.is_undefined()) throw std::runtime_error(obj.as_string());
  if (!obj.is_list() && !obj.is_string()) throw std::runtime_error("'" + obj.type_name() + "' object is not subscriptable");
  auto as_index = [](const Value& v, const char* what) -> int64_t {
    if (v.kind() != Value::Kind::integer && v.kind() != Value::Kind::boolean)
      throw std::runtime_error(std::string("slice ") + what + " must be an integer or None");
    return v.as_int();
  };
  const std::vector<uint32_t> cps = obj.is_string() ? code_points(obj.as_string()) : std::vector<uint32_t>();
  const int64_t n = static_cast<int64_t>(obj.is_string() ? cps.size() : obj.as_list().size());
  const int64_t s = step.is_none() ? 1 : as_index(step, "step");
  if (s == 0) throw std::runtime_error("slice step cannot be zero");
  auto clamp = [&](const Value& v, int64_t dflt, const char* what) {
    if (v.is_none()) return dflt;
    int64_t i = as_index(v, what);
    if (i < 0) i += n;
    if (s > 0) return std::clamp<int64_t>(i, 0, n);
    return std::clamp<int64_t>(i, -1, n - 1);
  };
  const int64_t b = clamp(start, s > 0 ? 0 : n - 1, "start");
  const int64_t e = clamp(stop, s > 0 ? n : -1, "stop");
  std::vector<size_t> picked;
  for (int64_t i = b; s > 0 ? i < e : i > e; i += s) picked.push_back(static_cast<size_t>(i));
  if (obj.is_string()) {
    std::string out;
    for (size_t i : picked) append_utf8(out, cps[i]);
    return Value::string(out);
  }
  ValueList out;
  for (size_t i : picked) out.push_back(obj.as_list()[i]);
  return Value::list(std::move(out));
}

}  // namespace starattn::jinja
