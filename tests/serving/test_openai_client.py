"""The official `openai` Python package against `starattn serve-local`: streamed and whole chat
completions and completions, prompt-only / list / token-id prompts, ignored unknown fields,
logprobs (streamed and whole), penalties, logit_bias, n > 1, models by id and the 404 for unknown
models, errors as the package's exceptions, the bearer token."""
import math
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

try:
    import openai
except ImportError:  # CI's venv has it (deploy/test.sh); elsewhere the test is skipped
    openai = None

MODEL = "tiny"
MESSAGES = [
    {"role": "system", "content": "You answer questions about documents."},
    {"role": "user", "content": "Document: star attention encodes blocks of the context in parallel."},
    {"role": "assistant", "content": "Understood."},
    {"role": "user", "content": "What is encoded in parallel?"},
]
CONTEXT = "Star attention splits a long context into blocks; each host encodes its blocks. " * 3
DOCUMENT = "\n\n".join(f"Paragraph {i}: block {i} of the context goes to host {i % 4}." for i in range(12))
QUESTION = "Question: which host holds block 7?\nAnswer:"
BOS = 256  # the tiny model's byte tokenizer: ids 0..255 are bytes
REPLACED = "\ufffd"  # how a byte that is not UTF-8 reads in JSON


def byte_ids(text):
    return list(text.encode())


@unittest.skipIf(openai is None, "the openai package is not installed")
class OpenAIClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.environ["STARATTN_TEST_API_KEY"] = "test-key-123"
        cls.server = su.Server("--api-key-env", "STARATTN_TEST_API_KEY", "--model-name", MODEL)
        cls.client = openai.OpenAI(base_url=cls.server.base + "/v1", api_key="test-key-123", max_retries=0)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def complete(self, **kw):
        kw.setdefault("model", MODEL)
        kw.setdefault("temperature", 0)
        extra = dict(kw.pop("extra_body", {}))
        extra.setdefault("ignore_eos", True)
        return self.client.completions.create(extra_body=extra, **kw)

    def test_streams_a_chat_completion(self):
        stream = self.client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0, stream=True,
            extra_body={"ignore_eos": True})
        pieces, finish, roles = [], None, []
        for chunk in stream:
            self.assertEqual(chunk.object, "chat.completion.chunk")
            choice = chunk.choices[0]
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
        self.assertEqual(roles, ["assistant"])
        self.assertEqual(finish, "length")
        self.assertGreater(len(pieces), 1, "tokens should arrive as several chunks")
        whole = self.client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
        self.assertEqual(whole.object, "chat.completion")
        self.assertEqual(whole.choices[0].message.role, "assistant")
        self.assertEqual(whole.choices[0].message.content, "".join(pieces))
        self.assertEqual(whole.usage.completion_tokens, 10)

    def test_streams_a_completion_with_an_explicit_query(self):
        stream = self.complete(prompt=CONTEXT, max_tokens=12, stream=True, stream_options={"include_usage": True},
                               extra_body={"query": "Who encodes the blocks?", "block_size": 64})
        text, usage = "", None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            if chunk.usage:
                usage = chunk.usage
        self.assertIsNotNone(usage)
        self.assertEqual(usage.completion_tokens, 12)
        whole = self.complete(prompt=CONTEXT, max_tokens=12,
                              extra_body={"query": "Who encodes the blocks?", "block_size": 64})
        self.assertEqual(whole.choices[0].text, text)
        self.assertEqual(whole.choices[0].finish_reason, "length")

    def test_a_plain_prompt_is_split_at_its_last_turn(self):
        # Prompt-only, as every stock completions client sends it: the "Question:" turn is the
        # query, the document before it the context; the same as naming that split explicitly.
        plain = self.complete(prompt=DOCUMENT + "\n\n" + QUESTION, max_tokens=10, extra_body={"block_size": 64})
        split = self.complete(prompt=DOCUMENT + "\n\n", max_tokens=10,
                              extra_body={"query": QUESTION, "block_size": 64})
        self.assertEqual(plain.choices[0].text, split.choices[0].text)
        self.assertEqual(plain.usage.prompt_tokens, split.usage.prompt_tokens)
        self.assertEqual(plain.usage.prompt_tokens, 1 + len((DOCUMENT + "\n\n" + QUESTION).encode()))

    def test_a_list_of_prompts_gives_one_choice_each(self):
        prompts = [DOCUMENT + "\n\n" + QUESTION, "Short prompt.\n\nQ: what is it?\nA:"]
        both = self.complete(prompt=prompts, max_tokens=6)
        self.assertEqual([c.index for c in both.choices], [0, 1])
        for i, p in enumerate(prompts):
            self.assertEqual(both.choices[i].text, self.complete(prompt=p, max_tokens=6).choices[0].text)
        self.assertEqual(both.usage.prompt_tokens, sum(1 + len(p.encode()) for p in prompts))
        self.assertEqual(both.usage.completion_tokens, 12)

    def test_token_id_prompts(self):
        # Ids with an explicit query are the same tokens as the text request (BOS + bytes).
        context, query = DOCUMENT, "Which host holds block 7?"
        by_text = self.complete(prompt=context, max_tokens=8, extra_body={"query": query})
        by_ids = self.complete(prompt=[BOS] + byte_ids(context), max_tokens=8,
                               extra_body={"query": byte_ids(query)})
        self.assertEqual(by_ids.choices[0].text, by_text.choices[0].text)
        # Without a query, the last 512 ids are the query: the same as that split made by hand.
        long_ids = ([BOS] + byte_ids(DOCUMENT * 2))[:700]
        plain = self.complete(prompt=long_ids, max_tokens=8)
        manual = self.complete(prompt=long_ids[:-512], max_tokens=8, extra_body={"query": long_ids[-512:]})
        self.assertEqual(plain.choices[0].text, manual.choices[0].text)
        self.assertEqual(plain.usage.prompt_tokens, 700)
        # A list of id lists: one choice each.
        short = [BOS] + byte_ids("Q: hi?")
        lists = self.complete(prompt=[long_ids, short], max_tokens=3)
        self.assertEqual([c.text for c in lists.choices],
                         [self.complete(prompt=p, max_tokens=3).choices[0].text for p in (long_ids, short)])
        self.assertEqual(lists.usage.prompt_tokens, 700 + 7)

    def test_unknown_fields_are_ignored(self):
        base = self.complete(prompt=DOCUMENT, max_tokens=6, extra_body={"query": "q?"})
        extra = self.complete(prompt=DOCUMENT, max_tokens=6, user="someone",
                              extra_body={"query": "q?", "no_such_field": 1, "nested_future": {"a": [1, 2]}})
        self.assertEqual(extra.choices[0].text, base.choices[0].text)
        chat = self.client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0, parallel_tool_calls=False,
            extra_body={"ignore_eos": True, "no_such_field": "x"})
        self.assertEqual(chat.usage.completion_tokens, 4)

    def check_greedy_logprobs(self, tokens, chosen, tops):
        # Greedy: the chosen token is the most likely one; logprobs are log-probabilities. Bytes
        # that are not UTF-8 all read as U+FFFD, so such keys may stand for several tokens.
        for token, lp, top in zip(tokens, chosen, tops):
            self.assertLessEqual(lp, 1e-6)
            self.assertIn(token, top)
            if token != REPLACED:
                self.assertAlmostEqual(top[token], lp, places=5)
            self.assertGreaterEqual(lp, max(top.values()) - 1e-5)
            self.assertLessEqual(sum(math.exp(v) for v in top.values()), 1 + 1e-4)

    def test_completion_logprobs_streamed_and_whole(self):
        kw = dict(prompt=DOCUMENT + "\n\n" + QUESTION, max_tokens=8, logprobs=3)
        whole = self.complete(**kw)
        lp = whole.choices[0].logprobs
        self.assertEqual(len(lp.tokens), 8)
        self.assertEqual(len(lp.top_logprobs), 8)
        self.assertTrue(all(1 <= len(t) <= 4 for t in lp.top_logprobs))
        self.check_greedy_logprobs(lp.tokens, lp.token_logprobs, lp.top_logprobs)
        self.assertEqual(lp.text_offset[0], 0)
        streamed_tokens, streamed_lps = [], []
        for chunk in self.complete(stream=True, **kw):
            for c in chunk.choices:
                if c.logprobs:
                    streamed_tokens += c.logprobs.tokens
                    streamed_lps += c.logprobs.token_logprobs
        self.assertEqual(streamed_tokens, lp.tokens)
        for a, b in zip(streamed_lps, lp.token_logprobs):
            self.assertAlmostEqual(a, b, places=6)

    def test_chat_logprobs_streamed_and_whole(self):
        kw = dict(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, top_logprobs=4,
                  extra_body={"ignore_eos": True})
        whole = self.client.chat.completions.create(**kw)
        content = whole.choices[0].logprobs.content
        self.assertEqual(len(content), 6)
        for entry in content:
            self.assertEqual(len(entry.top_logprobs), 4)
            top = {t.token: t.logprob for t in entry.top_logprobs}
            self.check_greedy_logprobs([entry.token], [entry.logprob], [top])
            self.assertEqual(bytes(entry.bytes).decode(errors="replace"), entry.token)
        streamed = []
        for chunk in self.client.chat.completions.create(stream=True, **kw):
            for c in chunk.choices:
                if c.logprobs and c.logprobs.content:
                    streamed += c.logprobs.content
        self.assertEqual([(e.token, round(e.logprob, 5)) for e in streamed],
                         [(e.token, round(e.logprob, 5)) for e in content])

    def test_logit_bias_changes_the_greedy_token(self):
        # Chat logprobs carry each token's bytes: with the byte tokenizer, its id.
        def first_token(**kw):
            r = self.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1, temperature=0,
                                                    logprobs=True, top_logprobs=2, **kw)
            return r.choices[0].logprobs.content[0]
        greedy = first_token()
        self.assertEqual(len(greedy.bytes), 1, "the tiny model's tokens are single bytes")
        banned = first_token(logit_bias={str(greedy.bytes[0]): -100})
        self.assertNotEqual(banned.bytes, greedy.bytes)
        # Without the ban the runner-up is what the ban leaves as the most likely token.
        self.assertEqual(banned.bytes, greedy.top_logprobs[1].bytes)
        forced = self.complete(prompt=DOCUMENT, max_tokens=5, logit_bias={"97": 100})
        self.assertEqual(forced.choices[0].text, "aaaaa")

    def test_penalties_shift_exactly_the_repeated_token(self):
        # "a" is forced by a +100 bias, so step 0 emits it in both runs and at step 1 the raw
        # logits are the same; a penalty p lowers "a" by p and only "a": every other token's
        # logprob moves by one shared constant c, and "a"'s by c - p.
        prompt = DOCUMENT + "\n\n" + QUESTION
        for field in ("presence_penalty", "frequency_penalty"):
            kw = dict(prompt=prompt, max_tokens=2, logprobs=20, logit_bias={"97": 100})
            plain = self.complete(**kw).choices[0].logprobs
            penalised = self.complete(**{field: 1.5}, **kw).choices[0].logprobs
            self.assertEqual(plain.tokens, ["a", "a"])
            self.assertEqual(penalised.tokens, ["a", "a"])
            a0, a1 = plain.top_logprobs[1], penalised.top_logprobs[1]
            shared = [t for t in a0 if t in a1 and t not in ("a", REPLACED)]
            self.assertGreaterEqual(len(shared), 3, (a0, a1))
            c = a1[shared[0]] - a0[shared[0]]
            for t in shared:
                self.assertAlmostEqual(a1[t] - a0[t], c, places=3, msg=field)
            self.assertAlmostEqual(a1["a"] - a0["a"], c - 1.5, places=3, msg=field)
        with self.assertRaises(openai.BadRequestError) as e:
            self.complete(prompt=prompt, max_tokens=1, presence_penalty=2.5)
        self.assertIn("presence_penalty", str(e.exception))

    def test_n_choices(self):
        prompt = DOCUMENT + "\n\n" + QUESTION
        sampled = self.complete(prompt=prompt, max_tokens=16, n=3, temperature=1.5, seed=11)
        self.assertEqual([c.index for c in sampled.choices], [0, 1, 2])
        texts = [c.text for c in sampled.choices]
        self.assertEqual(len(set(texts)), 3, texts)
        # Choice j is the request with seed + j.
        for j, text in enumerate(texts):
            self.assertEqual(self.complete(prompt=prompt, max_tokens=16, temperature=1.5, seed=11 + j).choices[0].text,
                             text)
        greedy = self.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0,
                                                     n=2, extra_body={"ignore_eos": True})
        self.assertEqual(len(greedy.choices), 2)
        self.assertEqual(greedy.choices[0].message.content, greedy.choices[1].message.content)
        indices = set()
        for chunk in self.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, n=2,
                                                         stream=True, extra_body={"ignore_eos": True}):
            indices.update(c.index for c in chunk.choices)
        self.assertEqual(indices, {0, 1})

    def test_seeded_sampling_is_reproducible(self):
        def once():
            r = self.complete(prompt=CONTEXT, max_tokens=8, temperature=0.8, top_p=0.9, seed=5,
                              extra_body={"query": "q", "top_k": 20})
            return r.choices[0].text
        self.assertEqual(once(), once())

    def test_models_by_id_and_unknown_models(self):
        models = self.client.models.list()
        self.assertEqual([m.id for m in models.data], [MODEL])
        self.assertEqual(self.client.models.retrieve(MODEL).id, MODEL)
        with self.assertRaises(openai.NotFoundError):
            self.client.models.retrieve("gpt-4o")
        with self.assertRaises(openai.NotFoundError) as e:
            self.client.completions.create(model="gpt-4o", prompt="x", max_tokens=1)
        self.assertIn("gpt-4o", str(e.exception))
        with self.assertRaises(openai.NotFoundError):
            self.client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=1)

    def test_errors_are_the_packages_exceptions(self):
        with self.assertRaises(openai.BadRequestError):
            self.client.completions.create(model=MODEL, prompt="x", extra_body={"query": "q", "mode": "half"})
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model=MODEL, prompt="x", echo=True)
        self.assertIn("echo", str(e.exception))
        bad = openai.OpenAI(base_url=self.server.base + "/v1", api_key="wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError):
            bad.completions.create(model=MODEL, prompt="x", extra_body={"query": "q"})


if __name__ == "__main__":
    su.run(sys.modules[__name__])
