"""LangChain's OpenAI integration (`langchain-openai`), a widely used client of OpenAI-compatible
servers, against `starattn serve-local`: its chat model and its completions LLM send their own
defaults (n, penalties, logprobs, prompt as a list), which must work and answer what the official
client gets; streaming, logprobs, n > 1 and an unknown model as the package's error."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

try:
    import openai
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langchain_openai import ChatOpenAI, OpenAI
except ImportError:  # CI's venv has them (deploy/test.sh); elsewhere the test is skipped
    openai = None

MODEL = "tiny"
DOCUMENT = "\n\n".join(f"Paragraph {i}: block {i} of the context goes to host {i % 4}." for i in range(12))
QUESTION = "Which host holds block 7?"
EXTRA = {"ignore_eos": True}  # answers of exactly max_tokens, so the comparisons are long enough


@unittest.skipIf(openai is None, "langchain-openai is not installed")
class LangChainClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = su.Server("--model-name", MODEL)
        cls.base = cls.server.base + "/v1"
        cls.client = openai.OpenAI(base_url=cls.base, api_key="unused", max_retries=0)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def chat_model(self, **kw):
        kw.setdefault("model", MODEL)
        kw.setdefault("temperature", 0)
        kw.setdefault("max_tokens", 8)
        return ChatOpenAI(base_url=self.base, api_key="unused", max_retries=0, extra_body=EXTRA, **kw)

    def messages(self):
        return [SystemMessage("You answer questions about documents."), HumanMessage(DOCUMENT),
                AIMessage("Understood."), HumanMessage(QUESTION)]

    def official_chat(self, **kw):
        roles = {"system": "system", "human": "user", "ai": "assistant"}
        msgs = [{"role": roles[m.type], "content": m.content} for m in self.messages()]
        return self.client.chat.completions.create(model=MODEL, messages=msgs, temperature=0, extra_body=EXTRA,
                                                   **kw)

    def test_chat_invoke_and_stream_answer_as_the_official_client(self):
        want = self.official_chat(max_tokens=8).choices[0].message.content
        reply = self.chat_model().invoke(self.messages())
        self.assertEqual(reply.content, want)
        self.assertEqual(reply.usage_metadata["output_tokens"], 8)
        streamed = "".join(chunk.content for chunk in self.chat_model().stream(self.messages()))
        self.assertEqual(streamed, want)

    def test_completions_llm_with_its_defaults(self):
        # The LLM sends prompt as a list, plus n, penalties and logprobs defaults of its own.
        prompt = DOCUMENT + "\n\nQuestion: " + QUESTION + "\nAnswer:"
        llm = OpenAI(base_url=self.base, api_key="unused", model=MODEL, temperature=0, max_tokens=8,
                     max_retries=0, extra_body=EXTRA)
        want = self.client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0,
                                              extra_body=EXTRA).choices[0].text
        self.assertEqual(llm.invoke(prompt), want)
        self.assertEqual("".join(llm.stream(prompt)), want)
        batch = llm.batch([prompt, "Short.\n\nQ: why?\nA:"])
        self.assertEqual(batch[0], want)
        self.assertEqual(len(batch), 2)

    def test_logprobs_and_n(self):
        reply = self.chat_model(logprobs=True, top_logprobs=3, max_tokens=5).invoke(self.messages())
        content = reply.response_metadata["logprobs"]["content"]
        want = self.official_chat(max_tokens=5, logprobs=True, top_logprobs=3).choices[0].logprobs.content
        self.assertEqual([(c["token"], round(c["logprob"], 5)) for c in content],
                         [(c.token, round(c.logprob, 5)) for c in want])
        self.assertTrue(all(len(c["top_logprobs"]) == 3 for c in content))
        result = self.chat_model(n=3, temperature=1.2, seed=3, max_tokens=12).generate([self.messages()])
        texts = [g.text for g in result.generations[0]]
        self.assertEqual(len(texts), 3)
        self.assertEqual(len(set(texts)), 3, texts)

    def test_penalties_and_bias_reach_the_server(self):
        biased = self.chat_model(logit_bias={"97": 100}, frequency_penalty=0.5, presence_penalty=0.5,
                                 max_tokens=4).invoke(self.messages())
        self.assertEqual(biased.content, "aaaa")

    def test_an_unknown_model_is_not_found(self):
        with self.assertRaises(openai.NotFoundError):
            self.chat_model(model="gpt-4o").invoke(self.messages())


if __name__ == "__main__":
    su.run(sys.modules[__name__])
