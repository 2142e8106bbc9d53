"""The official `openai` Python package against `starattn serve-local`: streamed and whole chat
completions and completions, errors as the package's exceptions, the bearer token."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serving_util as su  # noqa: E402

try:
    import openai
except ImportError:  # CI's venv has it (deploy/test.sh); elsewhere the test is skipped
    openai = None

MESSAGES = [
    {"role": "system", "content": "You answer questions about documents."},
    {"role": "user", "content": "Document: star attention encodes blocks of the context in parallel."},
    {"role": "assistant", "content": "Understood."},
    {"role": "user", "content": "What is encoded in parallel?"},
]
CONTEXT = "Star attention splits a long context into blocks; each host encodes its blocks. " * 3


@unittest.skipIf(openai is None, "the openai package is not installed")
class OpenAIClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        os.environ["STARATTN_TEST_API_KEY"] = "test-key-123"
        cls.server = su.Server("--api-key-env", "STARATTN_TEST_API_KEY")
        cls.client = openai.OpenAI(base_url=cls.server.base + "/v1", api_key="test-key-123", max_retries=0)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()

    def test_streams_a_chat_completion(self):
        stream = self.client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=10, temperature=0, stream=True,
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
            model="tiny", messages=MESSAGES, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
        self.assertEqual(whole.object, "chat.completion")
        self.assertEqual(whole.choices[0].message.role, "assistant")
        self.assertEqual(whole.choices[0].message.content, "".join(pieces))
        self.assertEqual(whole.usage.completion_tokens, 10)

    def test_streams_a_completion(self):
        stream = self.client.completions.create(
            model="tiny", prompt=CONTEXT, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
            extra_body={"query": "Who encodes the blocks?", "ignore_eos": True, "block_size": 64})
        text, usage = "", None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].text
            if chunk.usage:
                usage = chunk.usage
        self.assertIsNotNone(usage)
        self.assertEqual(usage.completion_tokens, 12)
        whole = self.client.completions.create(
            model="tiny", prompt=CONTEXT, max_tokens=12, temperature=0,
            extra_body={"query": "Who encodes the blocks?", "ignore_eos": True, "block_size": 64})
        self.assertEqual(whole.choices[0].text, text)
        self.assertEqual(whole.choices[0].finish_reason, "length")

    def test_seeded_sampling_is_reproducible(self):
        def once():
            r = self.client.completions.create(
                model="tiny", prompt=CONTEXT, max_tokens=8, temperature=0.8, top_p=0.9, seed=5,
                extra_body={"query": "q", "ignore_eos": True, "top_k": 20})
            return r.choices[0].text
        self.assertEqual(once(), once())

    def test_errors_are_the_packages_exceptions(self):
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.completions.create(model="tiny", prompt="x", max_tokens=2,
                                           extra_body={"query": "q", "no_such_field": 1})
        self.assertIn("no_such_field", str(e.exception))
        with self.assertRaises(openai.BadRequestError):
            self.client.completions.create(model="tiny", prompt="x", extra_body={"query": "q", "mode": "half"})
        bad = openai.OpenAI(base_url=self.server.base + "/v1", api_key="wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError):
            bad.completions.create(model="tiny", prompt="x", extra_body={"query": "q"})
        models = self.client.models.list()
        self.assertEqual(len(models.data), 1)


if __name__ == "__main__":
    su.run(sys.modules[__name__])
