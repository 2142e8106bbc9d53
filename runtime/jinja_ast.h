// Internals of the Jinja interpreter (runtime/jinja.h): tokens, the syntax tree, and the pieces
// the lexer, parser, evaluator and built-ins share.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "runtime/jinja.h"

namespace starattn::jinja {

// "line L, column C" of a byte offset in the template source.
std::string position_text(const std::string& source, size_t pos);
[[noreturn]] void fail(const std::string& source, size_t pos, const std::string& problem);

// ---- lexer (jinja_lexer.cpp) ----------------------------------------------------------------

struct Token {
  enum class Type { data, var_begin, var_end, block_begin, block_end, name, string, integer, floating, op, eof };
  Type type;
  std::string text;  // data text, name, operator, or the decoded string literal
  int64_t integer = 0;
  double floating = 0;
  size_t pos = 0;  // byte offset in the (newline-normalised) source
};

// Newlines normalised to "\n" and one trailing newline dropped, as Jinja's lexer does.
std::string normalise_source(const std::string& source);
// Tokens of a normalised source with trim_blocks and lstrip_blocks applied.
std::vector<Token> tokenize(const std::string& source);

// ---- syntax tree (jinja_parser.cpp) ---------------------------------------------------------

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    literal,   // value
    name,      // name
    getattr,   // args[0].name
    getitem,   // args[0][args[1]]
    slice,     // args[0][args[1]:args[2]:args[3]] (null parts absent)
    call,      // args[0](args[1..], kwargs)
    filter,    // args[0] | name(args[1..], kwargs); args[0] null in {% filter %}
    test,      // args[0] is name(args[1..])
    unary,     // name ("-", "+", "not") args[0]
    binary,    // args[0] name args[1]: + - * / // % ** ~ and or
    compare,   // args[0] ops[0] args[1] ops[1] args[2] ...
    cond,      // args[1] if args[0] else args[2] (null: undefined)
    list,      // [args...]
    dict,      // {args[0]: args[1], ...}
  };
  Kind kind;
  size_t pos = 0;
  Value value;
  std::string name;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind { text, output, if_, for_, set, set_block, macro, filter_block, break_, continue_, generation };
  Kind kind;
  size_t pos = 0;
  std::string text;                  // text; set_block / macro name
  ExprPtr expr;                      // output; for: iterable; set: value; filter_block: filter
  std::vector<std::string> targets;  // for / set names; set "ns.attr": {"ns", "attr"} with attribute
  bool attribute = false;            // set ns.attr = ...
  ExprPtr condition;                 // for ... if condition
  std::vector<std::pair<ExprPtr, Body>> branches;  // if / elif / else (null condition)
  Body body;                         // for / set_block / macro / filter_block / generation
  Body else_body;                    // for ... else
  std::vector<std::string> params;   // macro parameters
  std::vector<ExprPtr> defaults;     // one per parameter, null where none
};

struct Template {
  Body body;
};

std::unique_ptr<Template> parse(const std::string& source, const std::vector<Token>& tokens);

// ---- built-ins (jinja_builtins.cpp) ---------------------------------------------------------

bool is_filter(const std::string& name);
bool is_test(const std::string& name);
// Throw std::runtime_error / Error with the problem; the evaluator adds the position.
Value apply_filter(const std::string& name, const Value& input, const CallArgs& args);
bool apply_test(const std::string& name, const Value& input, const CallArgs& args);
// obj.name(args) for strings, dicts and lists; `found` false when there is no such method.
Value call_method(const Value& obj, const std::string& name, const CallArgs& args, bool& found);

// Python operations shared by the evaluator and the built-ins.
Value binary_op(const std::string& op, const Value& a, const Value& b);
bool compare_op(const std::string& op, const Value& a, const Value& b);
bool contains(const Value& container, const Value& item);
std::vector<Value> iterate(const Value& v);  // for-loops, filters; strings give characters
Value get_item(const Value& obj, const Value& key);    // obj[key], undefined when missing
Value get_attr(const Value& obj, const std::string& name);  // obj.name, undefined when missing
Value slice_of(const Value& obj, const Value& start, const Value& stop, const Value& step);
size_t length_of(const Value& v);

// UTF-8 helpers: code points of s, and the Python whitespace test.
std::vector<uint32_t> code_points(const std::string& s);
std::string from_code_points(const std::vector<uint32_t>& cps, size_t begin, size_t end);
bool is_python_space(uint32_t cp);
std::string python_strip(const std::string& s, bool left, bool right, const Value& chars);

}  // namespace starattn::jinja
