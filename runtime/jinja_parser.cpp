// Jinja's grammar for expressions (with its precedence: conditional, or, and, not, comparisons,
// + -, ~, * / // %, **, unary, postfix, filters and tests) and the statements chat templates
// use: if / elif / else, for (with else, a filter condition and tuple targets), set (names,
// tuples, namespace attributes, blocks), macro, filter blocks, break / continue, generation.
#include <set>
#include <string>
#include <vector>

#include "runtime/jinja_ast.h"

namespace starattn::jinja {
namespace {

using T = Token::Type;

ExprPtr make(Expr::Kind kind, size_t pos) {
  auto e = std::make_unique<Expr>();
  e->kind = kind;
  e->pos = pos;
  return e;
}

class Parser {
 public:
  Parser(const std::string& source, const std::vector<Token>& tokens) : src_(source), t_(tokens) {}

  std::unique_ptr<Template> run() {
    auto tpl = std::make_unique<Template>();
    std::string end;
    tpl->body = parse_body({}, end);
    return tpl;
  }

 private:
  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Token& next() { return t_[i_ < t_.size() - 1 ? i_++ : i_]; }
  bool is_op(const char* op) const { return cur().type == T::op && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == T::name && cur().text == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }
  [[noreturn]] void error(const std::string& problem) const { fail(src_, cur().pos, problem); }
  std::string describe(const Token& t) const {
    switch (t.type) {
      case T::eof: return "the end of the template";
      case T::var_end: return "'}}'";
      case T::block_end: return "'%}'";
      case T::data: return "text";
      default: return "'" + t.text + "'";
    }
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) error(std::string("expected '") + op + "', found " + describe(cur()));
  }
  std::string expect_name() {
    if (cur().type != T::name) error("expected a name, found " + describe(cur()));
    return next().text;
  }
  void expect(T type, const char* what) {
    if (cur().type != type) error(std::string("expected ") + what + ", found " + describe(cur()));
    next();
  }

  // Statements until a block tag named in `ends`; `end` gets that tag's name (the tag's name
  // token is consumed, the rest of the tag is the caller's).
  Body parse_body(const std::set<std::string>& ends, std::string& end) {
    Body body;
    for (;;) {
      const Token& tok = cur();
      if (tok.type == T::eof) {
        for (const std::string& e : ends)
          if (e.rfind("end", 0) == 0) error("missing {% " + e + " %}");
        return body;
      }
      if (tok.type == T::data) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::text;
        s->pos = tok.pos;
        s->text = tok.text;
        body.push_back(std::move(s));
        next();
      } else if (tok.type == T::var_begin) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Kind::output;
        s->pos = next().pos;
        s->expr = parse_tuple();
        expect(T::var_end, "'}}'");
        body.push_back(std::move(s));
      } else if (tok.type == T::block_begin) {
        next();
        if (cur().type != T::name) error("expected a tag name, found " + describe(cur()));
        const std::string tag = cur().text;
        if (ends.count(tag)) {
          next();
          end = tag;
          return body;
        }
        body.push_back(parse_statement());
      } else {
        error("unexpected " + describe(tok));
      }
    }
  }

  StmtPtr parse_statement() {
    const size_t pos = cur().pos;
    const std::string tag = next().text;
    auto s = std::make_unique<Stmt>();
    s->pos = pos;
    std::string end;
    if (tag == "if") {
      s->kind = Stmt::Kind::if_;
      ExprPtr cond = parse_tuple();
      for (;;) {
        expect(T::block_end, "'%}'");
        Body body = parse_body({"elif", "else", "endif"}, end);
        s->branches.emplace_back(std::move(cond), std::move(body));
        if (end == "endif") break;
        if (end == "else") {
          expect(T::block_end, "'%}'");
          s->branches.emplace_back(nullptr, parse_body({"endif"}, end));
          break;
        }
        cond = parse_tuple();
      }
    } else if (tag == "for") {
      s->kind = Stmt::Kind::for_;
      s->targets = parse_targets("in");
      if (!skip_name("in")) error("expected 'in' in the for tag, found " + describe(cur()));
      s->expr = parse_tuple(/*with_condexpr=*/false);
      if (skip_name("if")) s->condition = parse_tuple();
      if (is_name("recursive")) error("recursive for loops are not supported");
      expect(T::block_end, "'%}'");
      s->body = parse_body({"else", "endfor"}, end);
      if (end == "else") {
        expect(T::block_end, "'%}'");
        s->else_body = parse_body({"endfor"}, end);
      }
    } else if (tag == "set") {
      const std::string first = expect_name();
      if (skip_op(".")) {
        s->kind = Stmt::Kind::set;
        s->attribute = true;
        s->targets = {first, expect_name()};
      } else {
        s->targets = {first};
        while (skip_op(",")) s->targets.push_back(expect_name());
        if (cur().type == T::block_end) {
          if (s->targets.size() != 1) error("a {% set %} block assigns one name");
          s->kind = Stmt::Kind::set_block;
          s->text = first;
          next();
          s->body = parse_body({"endset"}, end);
          expect(T::block_end, "'%}'");
          return s;
        }
        s->kind = Stmt::Kind::set;
      }
      expect_op("=");
      s->expr = parse_tuple();
    } else if (tag == "macro") {
      s->kind = Stmt::Kind::macro;
      s->text = expect_name();
      expect_op("(");
      while (!skip_op(")")) {
        if (!s->params.empty()) expect_op(",");
        s->params.push_back(expect_name());
        s->defaults.push_back(skip_op("=") ? parse_expression() : nullptr);
      }
      expect(T::block_end, "'%}'");
      s->body = parse_body({"endmacro"}, end);
    } else if (tag == "filter") {
      s->kind = Stmt::Kind::filter_block;
      s->expr = parse_filter_chain(nullptr);
      expect(T::block_end, "'%}'");
      s->body = parse_body({"endfilter"}, end);
    } else if (tag == "generation") {
      // transformers' AssistantTracker: outside assistant-mask mode it renders its body.
      s->kind = Stmt::Kind::generation;
      expect(T::block_end, "'%}'");
      s->body = parse_body({"endgeneration"}, end);
    } else if (tag == "break" || tag == "continue") {
      s->kind = tag == "break" ? Stmt::Kind::break_ : Stmt::Kind::continue_;
    } else {
      fail(src_, pos, "the {% " + tag + " %} tag is not supported");
    }
    expect(T::block_end, "'%}'");
    return s;
  }

  std::vector<std::string> parse_targets(const char* stop) {
    std::vector<std::string> names;
    const bool paren = skip_op("(");
    do {
      if (is_name(stop)) break;
      names.push_back(expect_name());
    } while (skip_op(","));
    if (paren) expect_op(")");
    return names;
  }

  // Comma-separated expressions; more than one (or a trailing comma) make a tuple (a list).
  ExprPtr parse_tuple(bool with_condexpr = true) {
    const size_t pos = cur().pos;
    ExprPtr first = with_condexpr ? parse_expression() : parse_or();
    if (!is_op(",")) return first;
    auto list = make(Expr::Kind::list, pos);
    list->args.push_back(std::move(first));
    while (skip_op(",")) {
      if (cur().type == T::block_end || cur().type == T::var_end || is_op(")") || is_op("=")) break;
      list->args.push_back(with_condexpr ? parse_expression() : parse_or());
    }
    return list;
  }

  ExprPtr parse_expression() {
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      const size_t pos = next().pos;
      auto cond = make(Expr::Kind::cond, pos);
      cond->args.push_back(parse_or());
      cond->args.push_back(std::move(expr));
      cond->args.push_back(skip_name("else") ? parse_expression() : nullptr);
      expr = std::move(cond);
    }
    return expr;
  }

  ExprPtr binary(const char* op, ExprPtr left, ExprPtr right, size_t pos) {
    auto e = make(Expr::Kind::binary, pos);
    e->name = op;
    e->args.push_back(std::move(left));
    e->args.push_back(std::move(right));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      const size_t pos = next().pos;
      left = binary("or", std::move(left), parse_and(), pos);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      const size_t pos = next().pos;
      left = binary("and", std::move(left), parse_not(), pos);
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      auto e = make(Expr::Kind::unary, next().pos);
      e->name = "not";
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const size_t pos = cur().pos;
    ExprPtr first = parse_math1();
    ExprPtr cmp;
    for (;;) {
      std::string op;
      if (cur().type == T::op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                  cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && peek().type == T::name && peek().text == "in") {
        next();
        next();
        op = "not in";
      } else {
        break;
      }
      if (!cmp) {
        cmp = make(Expr::Kind::compare, pos);
        cmp->args.push_back(std::move(first));
      }
      cmp->ops.push_back(op);
      cmp->args.push_back(parse_math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      const Token& op = next();
      left = binary(op.text == "+" ? "+" : "-", std::move(left), parse_concat(), op.pos);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      const size_t pos = next().pos;
      left = binary("~", std::move(left), parse_math2(), pos);
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& op = next();
      const std::string name = op.text;
      left = binary(name.c_str(), std::move(left), parse_pow(), op.pos);
      left->name = name;
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      const size_t pos = next().pos;
      left = binary("**", std::move(left), parse_unary(true), pos);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      const Token& op = next();
      node = make(Expr::Kind::unary, op.pos);
      node->name = op.text;
      node->args.push_back(parse_unary(false));
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filter_expr(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& tok = cur();
    ExprPtr e;
    if (tok.type == T::name) {
      const std::string& n = tok.text;
      if (n == "true" || n == "True" || n == "false" || n == "False") {
        e = make(Expr::Kind::literal, tok.pos);
        e->value = Value::boolean(n == "true" || n == "True");
      } else if (n == "none" || n == "None") {
        e = make(Expr::Kind::literal, tok.pos);
        e->value = Value::none();
      } else {
        e = make(Expr::Kind::name, tok.pos);
        e->name = n;
      }
      next();
    } else if (tok.type == T::string) {
      e = make(Expr::Kind::literal, tok.pos);
      std::string s;
      while (cur().type == T::string) s += next().text;  // adjacent literals join
      e->value = Value::string(s);
    } else if (tok.type == T::integer || tok.type == T::floating) {
      e = make(Expr::Kind::literal, tok.pos);
      e->value = tok.type == T::integer ? Value::integer(tok.integer) : Value::number(tok.floating);
      next();
    } else if (is_op("(")) {
      next();
      if (skip_op(")")) return make(Expr::Kind::list, tok.pos);  // ()
      e = parse_tuple();
      expect_op(")");
    } else if (is_op("[")) {
      e = make(Expr::Kind::list, next().pos);
      while (!skip_op("]")) {
        if (!e->args.empty()) {
          expect_op(",");
          if (skip_op("]")) break;
        }
        e->args.push_back(parse_expression());
      }
    } else if (is_op("{")) {
      e = make(Expr::Kind::dict, next().pos);
      while (!skip_op("}")) {
        if (!e->args.empty()) {
          expect_op(",");
          if (skip_op("}")) break;
        }
        e->args.push_back(parse_expression());
        expect_op(":");
        e->args.push_back(parse_expression());
      }
    } else {
      error("unexpected " + describe(tok) + " in an expression");
    }
    return e;
  }

  ExprPtr parse_postfix(ExprPtr node) {
    for (;;) {
      if (is_op(".")) {
        const size_t pos = next().pos;
        if (cur().type == T::integer) {
          auto e = make(Expr::Kind::getitem, pos);
          e->args.push_back(std::move(node));
          auto index = make(Expr::Kind::literal, cur().pos);
          index->value = Value::integer(next().integer);
          e->args.push_back(std::move(index));
          node = std::move(e);
          continue;
        }
        auto e = make(Expr::Kind::getattr, pos);
        e->name = expect_name();
        e->args.push_back(std::move(node));
        node = std::move(e);
      } else if (is_op("[")) {
        node = parse_subscript(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr node) {
    const size_t pos = next().pos;  // [
    ExprPtr parts[3];
    int colons = 0;
    if (!is_op(":")) parts[0] = parse_expression();
    while (colons < 2 && skip_op(":")) {
      ++colons;
      if (!is_op(":") && !is_op("]")) parts[colons] = parse_expression();
    }
    if (is_op(",")) error("subscripts with several indices are not supported");
    expect_op("]");
    auto e = make(colons ? Expr::Kind::slice : Expr::Kind::getitem, pos);
    e->args.push_back(std::move(node));
    e->args.push_back(std::move(parts[0]));
    if (colons) {
      e->args.push_back(std::move(parts[1]));
      e->args.push_back(std::move(parts[2]));
    }
    return e;
  }

  // Arguments "(a, b, key=c)" into e->args (after what is there) and e->kwargs.
  void parse_call_args(Expr& e) {
    expect_op("(");
    bool first = true;
    while (!skip_op(")")) {
      if (!first) {
        expect_op(",");
        if (skip_op(")")) break;
      }
      first = false;
      if (is_op("*") || is_op("**")) error("*args and **kwargs in calls are not supported");
      if (cur().type == T::name && peek().type == T::op && peek().text == "=") {
        std::string key = next().text;
        next();
        e.kwargs.emplace_back(std::move(key), parse_expression());
      } else {
        if (!e.kwargs.empty()) error("a positional argument follows a keyword argument");
        e.args.push_back(parse_expression());
      }
    }
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = make(Expr::Kind::call, cur().pos);
    e->args.push_back(std::move(callee));
    parse_call_args(*e);
    return e;
  }

  ExprPtr parse_filter_chain(ExprPtr node) {
    do {
      const size_t pos = cur().pos;
      std::string name = expect_name();
      while (is_op(".")) {
        next();
        name += "." + expect_name();
      }
      if (!is_filter(name)) fail(src_, pos, "no filter named '" + name + "'");
      auto e = make(Expr::Kind::filter, pos);
      e->name = name;
      e->args.push_back(std::move(node));
      if (is_op("(")) parse_call_args(*e);
      node = std::move(e);
    } while (skip_op("|"));
    return node;
  }

  ExprPtr parse_filter_expr(ExprPtr node) {
    for (;;) {
      if (skip_op("|")) {
        node = parse_filter_chain(std::move(node));
      } else if (is_name("is")) {
        node = parse_test(std::move(node));
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_test(ExprPtr node) {
    const size_t pos = next().pos;  // is
    const bool negated = skip_name("not");
    const size_t name_pos = cur().pos;
    std::string name = expect_name();
    while (is_op(".")) {
      next();
      name += "." + expect_name();
    }
    if (!is_test(name)) fail(src_, name_pos, "no test named '" + name + "'");
    auto e = make(Expr::Kind::test, pos);
    e->name = name;
    e->args.push_back(std::move(node));
    if (is_op("(")) {
      parse_call_args(*e);
    } else if ((cur().type == T::name || cur().type == T::string || cur().type == T::integer ||
                cur().type == T::floating || is_op("(") || is_op("[") || is_op("{")) &&
               !is_name("else") && !is_name("or") && !is_name("and")) {
      if (is_name("is")) error("tests cannot be chained with 'is'");
      e->args.push_back(parse_postfix(parse_primary()));  // "x is divisibleby 3"
    }
    if (!negated) return e;
    auto n = make(Expr::Kind::unary, pos);
    n->name = "not";
    n->args.push_back(std::move(e));
    return n;
  }

  const std::string& src_;
  const std::vector<Token>& t_;
  size_t i_ = 0;
};

}  // namespace

std::unique_ptr<Template> parse(const std::string& source, const std::vector<Token>& tokens) {
  return Parser(source, tokens).run();
}

}  // namespace starattn::jinja
