#include "eval/filler.h"

#include <algorithm>
#include <cctype>
#include <set>
#include <sstream>

namespace starattn::eval {
namespace {

// One subject area. Sentences of a paragraph draw from one topic so the text reads like prose
// about something rather than a bag of unrelated words.
struct Topic {
  std::vector<std::string> people;   // subjects
  std::vector<std::string> actions;  // transitive verbs, past tense
  std::vector<std::string> things;   // singular nouns
  std::vector<std::string> adjectives;
  std::vector<std::string> places;   // prepositional phrases
  std::vector<std::string> events;   // complete clauses, past tense
};

const std::vector<Topic>& topics() {
  static const std::vector<Topic> kTopics = {
      {// the harbour
       {"the harbour master", "an old fisherman", "the ferry captain", "a young sailor",
        "the net mender", "the lighthouse keeper", "a boat builder", "the customs clerk"},
       {"repaired", "painted", "unloaded", "inspected", "tied up", "carried", "sold", "counted"},
       {"net", "rope", "anchor", "lantern", "barrel", "sail", "oar", "crate", "buoy", "hull"},
       {"salty", "weathered", "heavy", "tarred", "patched", "dripping", "faded", "sturdy"},
       {"on the pier", "by the breakwater", "in the boathouse", "along the quay",
        "behind the fish market", "at the harbour mouth"},
       {"the tide turned early", "gulls circled over the masts", "a fog rolled in from the sea",
        "the bell on the buoy rang all night", "the fishing fleet came home late",
        "waves broke against the harbour wall"}},
      {// the farm
       {"the farmer", "her eldest son", "a shepherd", "the dairy maid", "the old ploughman",
        "a travelling tinker", "the beekeeper", "the miller"},
       {"mended", "planted", "harvested", "fed", "fenced", "watered", "gathered", "stacked"},
       {"fence", "barn", "orchard", "hayrick", "wagon", "scythe", "beehive", "furrow", "trough",
        "gate"},
       {"muddy", "golden", "crooked", "fragrant", "dusty", "ripe", "wooden", "overgrown"},
       {"in the lower field", "behind the barn", "near the duck pond", "along the hedgerow",
        "at the edge of the meadow", "in the cider shed"},
       {"the rain held off until evening", "the cows wandered into the lane",
        "the apples ripened a week early", "a hawk hovered above the wheat",
        "the well ran low in August", "swallows nested under the eaves"}},
      {// the city market
       {"the spice merchant", "a street vendor", "the baker", "a pickpocket", "the mayor",
        "a flower seller", "the night watchman", "a tailor"},
       {"haggled over", "displayed", "wrapped", "weighed", "polished", "priced", "stole",
        "delivered"},
       {"carpet", "teapot", "basket", "ribbon", "saddle", "mirror", "scarf", "bracelet", "awning",
        "stall"},
       {"colourful", "expensive", "fragile", "embroidered", "glittering", "cheap", "ornate",
        "second-hand"},
       {"in the covered arcade", "beside the fountain", "under the clock tower",
        "at the corner of the square", "outside the guild hall", "in a narrow alley"},
       {"the bells rang for noon", "a crowd gathered to watch a juggler",
        "the cobblestones shone after the rain", "prices rose before the festival",
        "a cart overturned near the gate", "music drifted from a tavern"}},
      {// the mountains and weather
       {"the mountain guide", "a lone climber", "the hut warden", "a surveyor", "the goatherd",
        "a botanist", "the avalanche watcher", "a pilgrim"},
       {"crossed", "mapped", "climbed", "sheltered behind", "photographed", "measured",
        "circled", "cleared"},
       {"ridge", "glacier", "cairn", "pass", "boulder", "cornice", "waterfall", "summit", "scree",
        "ledge"},
       {"icy", "windswept", "jagged", "misty", "snowbound", "treacherous", "towering", "silent"},
       {"above the tree line", "below the northern face", "beside the frozen lake",
        "near the old chapel", "on the eastern slope", "at the head of the valley"},
       {"the wind dropped at dusk", "snow fell heavily through the night",
        "thunder echoed between the peaks", "the clouds lifted for an hour",
        "a rockfall blocked the path", "the stars came out sharp and bright"}},
      {// the kitchen
       {"the head cook", "a kitchen boy", "the pastry chef", "the housekeeper", "a hungry guest",
        "the butler", "the scullery maid", "the grandmother"},
       {"stirred", "baked", "seasoned", "chopped", "tasted", "scrubbed", "simmered", "served"},
       {"stew", "loaf", "kettle", "skillet", "pie", "ladle", "casserole", "dumpling", "cauldron",
        "platter"},
       {"steaming", "crusty", "burnt", "savoury", "copper", "greasy", "delicious", "bland"},
       {"on the back stove", "in the larder", "by the open window", "near the bread oven",
        "at the long table", "in the cold cellar"},
       {"the soup boiled over", "the smell of cinnamon filled the hall",
        "the fire in the range went out", "guests arrived an hour early",
        "the cat stole a sausage", "flour dusted every surface"}},
      {// the library and school
       {"the librarian", "a curious student", "the headmistress", "an elderly scholar",
        "the archivist", "a visiting poet", "the bookbinder", "a schoolteacher"},
       {"catalogued", "borrowed", "annotated", "translated", "shelved", "copied", "studied",
        "restored"},
       {"manuscript", "atlas", "ledger", "dictionary", "scroll", "notebook", "globe", "chalkboard",
        "inkwell", "lectern"},
       {"ancient", "tattered", "leatherbound", "illuminated", "forgotten", "rare", "dog-eared",
        "scholarly"},
       {"in the reading room", "on the top shelf", "behind the reference desk",
        "in the basement stacks", "beside the tall windows", "in the map room"},
       {"the lamps were lit early", "a lecture ran past midnight",
        "someone whispered in the gallery", "the clock above the door stopped",
        "rain tapped on the skylight", "the students argued about poetry"}},
      {// the workshop
       {"the blacksmith", "an apprentice", "the clockmaker", "a carpenter", "the glassblower",
        "the potter", "a locksmith", "the weaver"},
       {"forged", "sharpened", "carved", "assembled", "glazed", "soldered", "sanded", "wound"},
       {"hinge", "chisel", "anvil", "spindle", "bowl", "pendulum", "lathe", "bellows", "loom",
        "bracket"},
       {"gleaming", "rusty", "delicate", "polished", "unfinished", "brass", "handmade", "sturdy"},
       {"at the workbench", "near the furnace", "in the back room", "under the skylight",
        "beside the tool rack", "in the drying shed"},
       {"sparks flew from the grindstone", "the furnace roared all afternoon",
        "an order came in from the abbey", "the glue took two days to set",
        "sawdust drifted through the light", "the apprentice burned a thumb"}},
      {// the forest
       {"the forester", "a woodcutter", "the charcoal burner", "a hunter", "the herbalist",
        "a lost traveller", "the ranger", "a mushroom picker"},
       {"followed", "felled", "gathered", "tracked", "marked", "stumbled over", "sketched",
        "cleared away"},
       {"oak", "trail", "fern", "stump", "hollow", "thicket", "clearing", "brook", "acorn",
        "lichen"},
       {"mossy", "shadowy", "tangled", "ancient", "damp", "fallen", "dense", "tranquil"},
       {"deep in the pinewood", "by the woodland spring", "near the ruined mill",
        "along the deer path", "under the beech trees", "at the forest edge"},
       {"an owl called from the branches", "the leaves turned red overnight",
        "a fox crossed the path at dawn", "mist hung between the trunks",
        "the brook flooded after the storm", "woodpeckers drummed until noon"}},
      {// the railway
       {"the stationmaster", "a ticket inspector", "the engine driver", "a porter",
        "the signalman", "a weary commuter", "the conductor", "a newspaper boy"},
       {"checked", "loaded", "waved at", "oiled", "boarded", "uncoupled", "announced", "missed"},
       {"carriage", "platform", "timetable", "locomotive", "suitcase", "whistle", "signal",
        "turntable", "waiting room", "luggage trolley"},
       {"crowded", "punctual", "smoky", "rattling", "deserted", "freshly painted", "noisy",
        "draughty"},
       {"at the junction", "on the far platform", "in the goods yard", "beyond the viaduct",
        "near the level crossing", "inside the ticket hall"},
       {"the express ran twenty minutes late", "steam drifted across the platform",
        "a signal failed in the cutting", "the last train left in darkness",
        "snow buried the branch line", "a brass band played for the new line"}},
  };
  return kTopics;
}

const std::vector<std::string> kTimes = {
    "Early in the morning", "Late that evening", "Some years ago", "On a grey afternoon",
    "Just before the holidays", "After the long winter", "At first light", "Later that week",
    "Once in a while", "During the festival", "In the middle of the night", "Every autumn"};
const std::vector<std::string> kCounts = {"two", "three", "a dozen", "several", "a few",
                                          "many", "four", "half a dozen"};
const std::vector<std::string> kFeelings = {"pleased", "puzzled", "tired", "delighted",
                                            "worried", "amused", "surprised", "content"};

std::string capitalize(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

std::string a(const std::string& word) { return std::string(article(word)) + " " + word; }

}  // namespace

const char* article(const std::string& next_word) {
  if (next_word.empty()) return "a";
  const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(next_word[0])));
  return (c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u') ? "an" : "a";
}

FillerText::FillerText(uint64_t seed) : rng_(seed) {}

std::string FillerText::next() {
  const auto& all = topics();
  if (left_in_paragraph_ <= 0) {
    topic_ = rng_.below(all.size());
    left_in_paragraph_ = static_cast<int>(rng_.range(3, 7));
  }
  const Topic& t = all[topic_];
  Rng& r = rng_;
  const std::string& p = r.pick(t.people);
  const std::string& p2 = r.pick(t.people);
  const std::string& act = r.pick(t.actions);
  const std::string& act2 = r.pick(t.actions);
  const std::string& th = r.pick(t.things);
  const std::string& th2 = r.pick(t.things);
  const std::string& adj = r.pick(t.adjectives);
  const std::string& adj2 = r.pick(t.adjectives);
  const std::string& pl = r.pick(t.places);
  const std::string& ev = r.pick(t.events);
  std::string s;
  switch (r.below(14)) {
    case 0: s = r.pick(kTimes) + ", " + p + " " + act + " the " + adj + " " + th + " " + pl + "."; break;
    case 1: s = p + " " + act + " " + a(adj) + " " + th + " and then " + act2 + " the " + th2 + "."; break;
    case 2: s = "Everyone agreed that the " + th + " " + pl + " looked " + adj + "."; break;
    case 3: s = r.pick(kTimes) + ", " + ev + "."; break;
    case 4: s = "It was said that " + p + " had never " + act + " " + a(th) + " so " + adj + " before."; break;
    case 5: s = p + " kept " + a(adj) + " " + th + " " + pl + ", because " + ev + "."; break;
    case 6: s = "There were " + r.pick(kCounts) + " kinds of " + th + " " + pl + ", and most were " + adj + "."; break;
    case 7: s = "When " + ev + ", " + p + " " + act + " the " + th + "."; break;
    case 8: s = "Nobody knew whether the " + th + " " + pl + " was " + adj + " or merely " + adj2 + "."; break;
    case 9: s = p + " wrote a long letter about the " + adj + " " + th + " to " + p2 + "."; break;
    case 10: s = p + " was " + r.pick(kFeelings) + " to find that " + ev + "."; break;
    case 11: s = "According to " + p + ", the best " + th + " is always " + adj + " and never " + adj2 + "."; break;
    case 12: s = "The " + th + " " + pl + " had been " + act + " by " + p + " long ago."; break;
    default: s = "Nobody remembered who had " + act + " the " + th2 + ", but " + ev + "."; break;
  }
  --left_in_paragraph_;
  return capitalize(s) + (left_in_paragraph_ == 0 ? "\n\n" : " ");
}

std::vector<std::string> filler_sentences(uint64_t seed, size_t count) {
  FillerText text(seed);
  std::vector<std::string> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) out.push_back(text.next());
  return out;
}

const std::vector<std::string>& filler_words() {
  static const std::vector<std::string> kWords = [] {
    std::set<std::string> words;
    const auto add_words = [&](const std::string& phrase) {
      std::istringstream in(phrase);
      std::string w;
      while (in >> w) {
        const bool alpha = std::all_of(w.begin(), w.end(), [](char c) {
          return std::islower(static_cast<unsigned char>(c)) != 0;
        });
        // Short words ("the", "on") would match inside other words and carry no content.
        if (alpha && w.size() >= 4) words.insert(w);
      }
    };
    for (const Topic& t : topics()) {
      for (const auto* list : {&t.people, &t.actions, &t.things, &t.adjectives, &t.places, &t.events})
        for (const auto& phrase : *list) add_words(phrase);
    }
    for (const auto& f : kFeelings) add_words(f);
    // Drop any word contained in another, so substring scoring cannot confuse them.
    std::vector<std::string> out;
    for (const auto& w : words) {
      bool inside = false;
      for (const auto& other : words)
        if (other != w && other.find(w) != std::string::npos) inside = true;
      if (!inside) out.push_back(w);
    }
    return out;
  }();
  return kWords;
}

const std::vector<std::string>& key_adjectives() {
  static const std::vector<std::string> kAdj = [] {
    std::set<std::string> s;
    for (const Topic& t : topics())
      for (const auto& w : t.adjectives)
        if (w.find(' ') == std::string::npos && w.find('-') == std::string::npos) s.insert(w);
    return std::vector<std::string>(s.begin(), s.end());
  }();
  return kAdj;
}

const std::vector<std::string>& key_nouns() {
  static const std::vector<std::string> kNouns = [] {
    std::set<std::string> s;
    for (const Topic& t : topics())
      for (const auto& w : t.things)
        if (w.find(' ') == std::string::npos) s.insert(w);
    return std::vector<std::string>(s.begin(), s.end());
  }();
  return kNouns;
}

}  // namespace starattn::eval
