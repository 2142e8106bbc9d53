#include "eval/ruler_tasks.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <stdexcept>
#include <utility>

#include "eval/filler.h"
#include "eval/rng.h"
#include "runtime/bpe_tokenizer.h"

namespace starattn::eval {
namespace {

// Lines placed in a haystack at a relative depth in [0, 1].
struct Insert {
  double depth;
  std::string text;
};

// The haystack with n filler sentences and the inserts between them; inserts keep their order
// when their depths tie, so a chain stays in order.
std::string compose(const std::vector<std::string>& filler, size_t n, std::vector<Insert> inserts) {
  std::stable_sort(inserts.begin(), inserts.end(),
                   [](const Insert& x, const Insert& y) { return x.depth < y.depth; });
  std::string out;
  size_t next = 0;
  for (size_t i = 0; i <= n; ++i) {
    while (next < inserts.size() &&
           static_cast<size_t>(inserts[next].depth * static_cast<double>(n) + 0.5) <= i)
      out += inserts[next++].text + " ";
    if (i < n) out += filler[i];
  }
  while (!out.empty() && std::isspace(static_cast<unsigned char>(out.back()))) out.pop_back();
  return out;
}

// The largest n in [0, limit] with fits(n), for a fits that holds up to some n and fails after.
// Returns -1 when even fits(0) fails.
template <typename Fits>
int64_t largest_fitting(int64_t limit, Fits fits) {
  if (!fits(0)) return -1;
  int64_t lo = 0, hi = limit + 1;  // fits(lo) holds; fits(hi) fails or hi is past the limit
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (fits(mid) ? lo : hi) = mid;
  }
  return lo;
}

std::string make_key(Rng& rng, std::set<std::string>& used) {
  for (;;) {
    std::string key = rng.pick(key_adjectives()) + "-" + rng.pick(key_nouns());
    if (used.insert(key).second) return key;
  }
}

std::string make_value(Rng& rng, std::set<std::string>& used, int64_t lo, int64_t hi) {
  for (;;) {
    std::string v = std::to_string(rng.range(lo, hi));
    if (used.insert(v).second) return v;
  }
}

// "a", "a and b", "a, b, and c".
std::string join_list(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += items.size() == 2 ? " and " : (i + 1 == items.size() ? ", and " : ", ");
    out += items[i];
  }
  return out;
}

// Fills a haystack document to the length budget: `head` + filler with inserts, then the question.
void fill_haystack(Instance& inst, const std::string& head, const std::vector<Insert>& inserts,
                   const Layout& layout) {
  const int64_t budget = inst.length - inst.max_tokens;
  FillerText stream(mix_seed(inst.seed, 0xF111));
  std::vector<std::string> filler;
  const auto fits = [&](int64_t n) {
    while (filler.size() < static_cast<size_t>(n)) filler.push_back(stream.next());
    inst.document = head + compose(filler, static_cast<size_t>(n), inserts);
    inst.ids = layout(inst.document, inst.question, inst.answer_prefix);
    return inst.prompt_tokens() <= budget;
  };
  // A sentence is at least four tokens, which bounds the search.
  const int64_t n = largest_fitting(std::max<int64_t>(budget / 4, 1), fits);
  if (n < 0)
    throw std::invalid_argument("length " + std::to_string(inst.length) + " is too short for " +
                                inst.task + ": its fixed text and answer budget need more");
  fits(n);
}

void make_niah(Instance& inst, Rng& rng, const Layout& layout) {
  int keys = 1, values_per_key = 1, queried = 1;
  if (inst.task == "niah_multikey") keys = 4;
  if (inst.task == "niah_multivalue") values_per_key = 4;
  if (inst.task == "niah_multiquery") keys = queried = 4;
  std::set<std::string> used_keys, used_values;
  std::vector<std::string> key_list;
  std::vector<Insert> inserts;
  std::vector<std::string> expected;
  std::vector<Insert> answer_values;  // the queried values at their needles' depths
  for (int k = 0; k < keys; ++k) {
    key_list.push_back(make_key(rng, used_keys));
    for (int v = 0; v < values_per_key; ++v) {
      const std::string value = make_value(rng, used_values, 1000000, 9999999);
      inserts.push_back({rng.unit(), "One of the special magic numbers for " + key_list.back() +
                                         " is: " + value + "."});
      if (k < queried) {
        expected.push_back(value);
        answer_values.push_back({inserts.back().depth, value});
      }
    }
  }
  // The queried keys are the first ones generated; the needles' order in the text is random.
  const std::vector<std::string> asked(key_list.begin(), key_list.begin() + queried);
  const bool plural = expected.size() > 1;
  const std::string what = plural ? "special magic numbers" : "special magic number";
  inst.question = std::string(plural ? "What are all the " : "What is the ") + what + " for " +
                  join_list(asked) + " mentioned in the provided text?";
  inst.answer_prefix = "The " + what + " for " + join_list(asked) + " mentioned in the provided text " +
                       (plural ? "are" : "is");
  inst.expected = expected;
  // Several values of one key are listed in their order in the text (as compose places them);
  // several keys' values in the question's order.
  if (values_per_key > 1)
    std::stable_sort(answer_values.begin(), answer_values.end(),
                     [](const Insert& x, const Insert& y) { return x.depth < y.depth; });
  std::vector<std::string> in_order;
  for (const auto& v : answer_values) in_order.push_back(v.text);
  inst.answer = " " + join_list(in_order) + ".";
  inst.needles = static_cast<int>(inserts.size());
  fill_haystack(inst,
                "Some special magic numbers are hidden within the following text. Make sure to "
                "memorize it. I will quiz you about the numbers afterwards.\n\n",
                inserts, layout);
}

std::string make_variable(Rng& rng, std::set<std::string>& used) {
  for (;;) {
    std::string name;
    for (int i = 0; i < 5; ++i) name += static_cast<char>('A' + rng.below(26));
    if (used.insert(name).second) return name;
  }
}

void make_vt(Instance& inst, Rng& rng, const Layout& layout) {
  constexpr int kHops = 4;  // RULER's default: one chain of four hops, five variables
  std::set<std::string> used;
  std::set<std::string> used_values;
  const std::string value = make_value(rng, used_values, 10000, 99999);
  std::vector<std::string> vars;
  for (int i = 0; i <= kHops; ++i) vars.push_back(make_variable(rng, used));
  // Depths drawn then sorted, so the chain appears in order (as RULER places it).
  std::vector<double> depths;
  for (int i = 0; i <= kHops; ++i) depths.push_back(rng.unit());
  std::sort(depths.begin(), depths.end());
  std::vector<Insert> inserts;
  inserts.push_back({depths[0], "VAR " + vars[0] + " = " + value + "."});
  for (int i = 1; i <= kHops; ++i)
    inserts.push_back({depths[i], "VAR " + vars[i] + " = VAR " + vars[i - 1] + "."});
  inst.question = "Question: Find all variables that are assigned the value " + value +
                  " in the text above.";
  inst.answer_prefix = "Answer: According to the chain of variable assignments in the text above, " +
                       std::to_string(kHops + 1) + " variables are assigned the value " + value +
                       ", they are:";
  inst.expected = vars;
  for (const auto& v : vars) inst.answer += " " + v;
  inst.needles = static_cast<int>(inserts.size());
  fill_haystack(inst,
                "Memorize and track the chain of variable assignments hidden in the following "
                "text.\n\n",
                inserts, layout);
}

void make_cwe(Instance& inst, Rng& rng, const Layout& layout) {
  constexpr int kCommon = 10;
  std::vector<std::string> words = filler_words();
  rng.shuffle(words);
  const std::vector<std::string> common(words.begin(), words.begin() + kCommon);
  const std::vector<std::string> rare(words.begin() + kCommon, words.end());
  // RULER repeats the common words 30 times and the others 3 times at long lengths. Short
  // prompts cannot hold that many, so the common frequency scales with the length (4 at 1K,
  // 30 from 8K) and the rare one stays a tenth of it (at least once); the ratio is what matters.
  const int64_t budget = inst.length - inst.max_tokens;
  const int common_freq = static_cast<int>(std::clamp<int64_t>(inst.length / 256, 4, 30));
  int rare_freq = std::max(1, common_freq / 10);
  inst.question = "Question: What are the 10 most common words in the list above?";
  inst.answer_prefix = "Answer: The top 10 words that appear most often in the list are:";
  inst.expected = common;
  const std::string head =
      "Below is a numbered list of words. In these words, some appear more often than others. "
      "Memorize the ones that appear most often.\n";
  const uint64_t order_seed = rng.next();
  const auto fits = [&](int64_t n) {
    std::vector<std::string> list;
    for (const auto& w : common) list.insert(list.end(), static_cast<size_t>(common_freq), w);
    for (int64_t i = 0; i < n; ++i)
      list.insert(list.end(), static_cast<size_t>(rare_freq), rare[static_cast<size_t>(i)]);
    Rng order(order_seed);
    order.shuffle(list);
    inst.document = head;
    for (size_t i = 0; i < list.size(); ++i)
      inst.document += std::to_string(i + 1) + ". " + list[i] + (i + 1 < list.size() ? "\n" : "");
    inst.ids = layout(inst.document, inst.question, inst.answer_prefix);
    // The common words in the order they first appear in the list.
    inst.answer.clear();
    std::set<std::string> named;
    for (const auto& w : list)
      if (named.size() < common.size() &&
          std::find(common.begin(), common.end(), w) != common.end() && named.insert(w).second)
        inst.answer += " " + w;
    return inst.prompt_tokens() <= budget;
  };
  // When the vocabulary runs out before the budget is full, the rare words repeat more often;
  // they must stay rarer than the common ones.
  for (;;) {
    const int64_t limit = static_cast<int64_t>(rare.size());
    const int64_t n = largest_fitting(limit, fits);
    if (n < 0)
      throw std::invalid_argument("length " + std::to_string(inst.length) +
                                  " is too short for cwe: ten common words need more");
    if (n < limit || rare_freq + 1 >= common_freq) {
      fits(n);
      return;
    }
    ++rare_freq;
  }
}

}  // namespace

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> kNames = {"niah_single",     "niah_multikey",
                                                  "niah_multivalue", "niah_multiquery",
                                                  "vt",              "cwe"};
  return kNames;
}

bool is_task(const std::string& name) {
  const auto& n = task_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

int default_max_tokens(const std::string& task) {
  if (task == "vt") return 30;
  if (task == "cwe") return 120;
  return 128;
}

Layout chat_layout(const Tokenizer& tokenizer, const std::optional<ChatTemplate>& chat) {
  return [&tokenizer, chat](const std::string& document, const std::string& question,
                            const std::string& answer_prefix) {
    PromptIds ids = document_prompt(tokenizer, chat, document, question);
    if (!answer_prefix.empty()) {
      const auto* bpe = dynamic_cast<const BpeTokenizer*>(&tokenizer);
      // Without a template there is no assistant header: the prefix follows the question.
      const std::string text = chat ? answer_prefix : "\n" + answer_prefix;
      const std::vector<int32_t> more = bpe ? bpe->encode(text, false) : tokenizer.encode(text);
      ids.query.insert(ids.query.end(), more.begin(), more.end());
    }
    return ids;
  };
}

uint64_t instance_seed(uint64_t seed, const std::string& task, int64_t length, int index) {
  return mix_seed(mix_seed(mix_seed(seed, hash_label(task)), static_cast<uint64_t>(length)),
                  static_cast<uint64_t>(index));
}

Instance make_instance(const std::string& task, int64_t length, uint64_t seed,
                       const Layout& layout, int max_tokens) {
  if (!is_task(task)) throw std::invalid_argument("unknown task '" + task + "'");
  if (max_tokens < 0) throw std::invalid_argument("max_tokens must not be negative");
  Instance inst;
  inst.task = task;
  inst.length = length;
  inst.seed = seed;
  inst.max_tokens = max_tokens > 0 ? max_tokens : default_max_tokens(task);
  Rng rng(seed);
  if (task == "vt") make_vt(inst, rng, layout);
  else if (task == "cwe") make_cwe(inst, rng, layout);
  else make_niah(inst, rng, layout);
  return inst;
}

double score_answer(const std::string& output, const std::vector<std::string>& expected) {
  if (expected.empty()) return 0.0;
  const auto lower = [](std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  };
  const std::string out = lower(output);
  int found = 0;
  for (const auto& e : expected)
    if (out.find(lower(e)) != std::string::npos) ++found;
  return static_cast<double>(found) / static_cast<double>(expected.size());
}

}  // namespace starattn::eval
