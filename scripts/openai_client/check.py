"""The official `openai` Python client (PyPI) against `tandem serve`: an independent client.

Usage: python check.py PATH/TO/tandem

Starts `tandem serve --port 0 --api-key ...`, reads the address it prints, and checks models,
completions, chat, streaming (with usage), stop strings, n > 1, structured output (a JSON
schema's answer validated with `jsonschema`, json_object, a choice) and the error cases through the
client's own types (NotFoundError, BadRequestError, AuthenticationError); then sends SIGTERM and
expects exit status 0. Also reads `/metrics` with `prometheus_client`'s own text parser: the
`vllm:` families the Gateway API Inference Extension's endpoint picker reads, with values that
match the requests sent. Exits non-zero on the first failed check.
"""

import json
import signal
import subprocess
import sys
import time
import urllib.request

import jsonschema
import openai
from prometheus_client.parser import text_string_to_metric_families

KEY = "ci-test-key"


def start(binary):
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", "--api-key", KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        sys.exit(f"serve did not print its address: {line!r}")
    base = line.split("http://", 1)[1].split()[0].rstrip("/")
    if not base.endswith("/v1"):
        base = base.split("/")[0] + "/v1"
    return proc, "http://" + base


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok -", what.split(":")[0])


def run(base):
    client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=120)

    models = client.models.list().data
    check(len(models) == 1, f"one model listed: {models}")
    model = models[0].id

    c = client.completions.create(model=model, prompt="The capital of France is", max_tokens=8, temperature=0)
    check(c.choices[0].text.strip() != "", f"completion text: {c}")
    check(c.choices[0].finish_reason in ("stop", "length"), f"completion finish_reason: {c}")
    check(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, f"completion usage: {c.usage}")

    # The server runs the default model with int8 matmuls (as llama.cpp does); on the bare
    # question this 135M model's first token is a coin toss between "The" and "L'" (docs/model.md),
    # so ask for a brief answer, which both weight formats answer with Paris.
    question = [{"role": "user", "content": "What is the capital of France? Answer briefly."}]
    chat = client.chat.completions.create(model=model, messages=question, max_tokens=20, temperature=0)
    answer = chat.choices[0].message.content
    check("Paris" in answer, f"chat answer names Paris: {answer!r}")
    check(chat.choices[0].message.role == "assistant", "chat role")

    stream = client.chat.completions.create(
        model=model,
        messages=question,
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    check(text == answer, f"streamed chat equals the non-streamed greedy answer: {text!r} vs {answer!r}")
    check(usage is not None and usage.completion_tokens == chat.usage.completion_tokens, f"stream usage: {usage}")
    check(finish == chat.choices[0].finish_reason, f"stream finish_reason: {finish}")

    stopped = client.chat.completions.create(model=model, messages=question, max_tokens=20, temperature=0, stop=["Paris"])
    check("Paris" not in stopped.choices[0].message.content, f"stop string cut: {stopped.choices[0].message.content!r}")
    check(stopped.choices[0].finish_reason == "stop", "stop string finish_reason")

    scored = client.chat.completions.create(
        model=model, messages=question, max_tokens=20, temperature=0, logprobs=True, top_logprobs=3
    )
    content = scored.choices[0].logprobs.content
    check(len(content) == scored.usage.completion_tokens, f"one logprob per token: {len(content)}")
    check(all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content), "three alternatives, logprob <= 0")
    check(all(t.token == t.top_logprobs[0].token for t in content), "greedy picks the most likely token")
    check(scored.choices[0].message.content == answer, "logprobs do not change the answer")

    many = client.completions.create(model=model, prompt="Once upon a time", max_tokens=5, n=3, seed=7, temperature=1.0)
    check(sorted(ch.index for ch in many.choices) == [0, 1, 2], f"n=3 choices: {many.choices}")

    try:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=3)
        check(False, "unknown model is refused")
    except openai.NotFoundError as e:
        check(e.status_code == 404 and "no-such-model" in str(e), f"unknown model -> NotFoundError 404: {e}")

    try:
        client.completions.create(model=model, prompt="hi", max_tokens=-1)
        check(False, "negative max_tokens is refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"negative max_tokens -> BadRequestError 400: {e}")

    check_logit_bias(client, model, base)
    check_structured(client, model)
    check_tools(client, model)
    check_extras(client, model)
    check_metrics(base)

    wrong = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0)
    try:
        wrong.models.list()
        check(False, "a wrong key is refused")
    except openai.AuthenticationError as e:
        check(e.status_code == 401, f"wrong key -> AuthenticationError 401: {e}")


def check_structured(client, model):
    # A JSON schema (strict): the answer parses and validates, even from the 135M model.
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "population_millions": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        "required": ["city", "population_millions"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France and its population? Answer in JSON."}],
        max_tokens=96,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}},
    )
    obj = json.loads(r.choices[0].message.content)
    jsonschema.validate(obj, schema)
    check(True, f"json_schema answer validates: {obj}")
    r = client.chat.completions.create(
        model=model,
        # A question with a short answer: open-ended ones ("describe a cat") make this small
        # model loop inside a string until max_tokens cuts the object off.
        messages=[{"role": "user", "content": "Return a JSON object with one key, color, for the sky."}],
        max_tokens=96,
        temperature=0,
        response_format={"type": "json_object"},
    )
    check(r.choices[0].finish_reason == "stop" and isinstance(json.loads(r.choices[0].message.content), dict),
          f"json_object answer is a whole object: {r.choices[0].message.content!r}")
    # vLLM's structured_outputs through the client's extra_body: a choice, on completions.
    r = client.completions.create(
        model=model, prompt="Is Paris in France? Answer:", max_tokens=4, temperature=0,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    check(r.choices[0].text in ("yes", "no"), f"structured_outputs choice: {r.choices[0].text!r}")
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
            response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}},
        )
        check(False, "a schema that cannot compile is refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.body.get("param") == "response_format", f"bad schema -> 400 naming response_format: {e}")


def tokenize(base, text):
    root = base[: -len("/v1")]
    req = urllib.request.Request(
        root + "/tokenize",
        data=json.dumps({"prompt": text, "add_special_tokens": False}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)["tokens"]


def check_logit_bias(client, model, base):
    prompt = "The capital of France is"
    first = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0).choices[0].text
    [banned] = tokenize(base, first)
    other = client.completions.create(
        model=model, prompt=prompt, max_tokens=1, temperature=0, logit_bias={str(banned): -100}
    ).choices[0].text
    check(other != first, f"logit_bias -100 bans the greedy token: {first!r} -> {other!r}")
    forced = tokenize(base, " London")[0]
    got = client.completions.create(
        model=model, prompt=prompt, max_tokens=1, temperature=0, logit_bias={str(forced): 100}
    ).choices[0].text
    check(got != first and " London".startswith(got), f"logit_bias +100 forces a token: {got!r}")


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 32}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}


def check_extras(client, model):
    # `echo`: the prompt's text, then the completion's.
    plain = client.completions.create(model=model, prompt="The sky is", max_tokens=4, temperature=0)
    echoed = client.completions.create(model=model, prompt="The sky is", max_tokens=4, temperature=0, echo=True)
    check(echoed.choices[0].text == "The sky is" + plain.choices[0].text, f"echo: {echoed.choices[0].text!r}")
    # A field neither OpenAI nor vLLM define is a 400 naming it, as OpenAI answers.
    try:
        client.completions.create(model=model, prompt="hi", max_tokens=2, extra_body={"frobnicate": 1})
        check(False, "an unknown field is refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.body.get("param") == "frobnicate", f"unknown field -> 400 naming it: {e}")
    # Inert fields at their defaults pass.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2, user="alice", store=False,
        parallel_tool_calls=True, service_tier="auto",
    )
    check(r.choices[0].message.content is not None, "user/store/service_tier at their defaults accepted")


def check_tools(client, model):
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    params = WEATHER["function"]["parameters"]
    # A named function: constrained, so the arguments validate even from the 135M model.
    r = client.chat.completions.create(
        model=model, messages=ask, max_tokens=80, temperature=0, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    calls = r.choices[0].message.tool_calls
    check(r.choices[0].finish_reason == "tool_calls" and len(calls) == 1, f"named tool call: {r.choices[0]}")
    check(calls[0].function.name == "get_weather", "named call's function")
    jsonschema.validate(json.loads(calls[0].function.arguments), params)
    check(True, f"named call's arguments validate: {calls[0].function.arguments}")
    # `required`, streamed: the call arrives as tool_calls deltas.
    stream = client.chat.completions.create(
        model=model, messages=ask, max_tokens=80, temperature=0, tools=[WEATHER], tool_choice="required", stream=True,
    )
    deltas, finish = [], None
    for chunk in stream:
        for ch in chunk.choices:
            deltas.extend(ch.delta.tool_calls or [])
            finish = ch.finish_reason or finish
    check(finish == "tool_calls" and deltas and deltas[0].function.name == "get_weather", f"streamed tool-call deltas: {deltas}")
    args = "".join(d.function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(args), params)
    check(True, "streamed call's arguments validate")
    # `auto`: free generation; after one worked example (an earlier turn's call, rendered back
    # through the template as a <tool_call> block) the model answers in the Hermes format, and
    # the server parses the call out of the text.
    history = [
        {"role": "user", "content": "What is the weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": json.dumps({"city": "Rome", "unit": "celsius"})}}]},
        {"role": "user", "content": "What is the weather in Paris?"},
    ]
    r = client.chat.completions.create(model=model, messages=history, max_tokens=60, temperature=0, tools=[WEATHER])
    calls = r.choices[0].message.tool_calls or []
    check(len(calls) == 1 and calls[0].function.name == "get_weather", f"auto tool call parsed: {r.choices[0].message}")
    check(json.loads(calls[0].function.arguments).get("city") == "Paris", f"auto call's city: {calls[0].function.arguments}")
    try:
        client.completions.create(model=model, prompt="hi", max_tokens=2, extra_body={"tools": [WEATHER]})
        check(False, "tools on completions are refused")
    except openai.BadRequestError as e:
        check(e.status_code == 400, f"tools on completions -> 400: {e}")


def scrape(root):
    with urllib.request.urlopen(root + "/metrics", timeout=30) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


def check_metrics(base):
    root = base[: -len("/v1")]
    # The engine's gauges may lag the last response by a step: poll briefly for the idle state.
    for _ in range(100):
        ctype, text = scrape(root)
        families = {f.name: f for f in text_string_to_metric_families(text)}
        running = [s.value for s in families["vllm:num_requests_running"].samples]
        if running == [0.0]:
            break
        time.sleep(0.02)
    check(ctype.startswith("text/plain; version=0.0.4"), f"/metrics is Prometheus text 0.0.4: {ctype}")
    # What the endpoint picker and vLLM dashboards read (the parser drops counters' `_total`).
    for name in ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:cache_config_info", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits",
                 "vllm:generation_tokens", "vllm:prompt_tokens", "vllm:time_to_first_token_seconds",
                 "vllm:e2e_request_latency_seconds", "vllm:num_preemptions"]:
        check(name in families, f"{name} parsed from /metrics: {sorted(families)}")
    value = lambda name, suffix="": [s.value for s in families[name].samples if s.name == name + suffix]
    # Every request above has finished: nothing runs or waits, and tokens were generated.
    check(value("vllm:num_requests_running") == [0.0], f"vllm:num_requests_running 0: {value('vllm:num_requests_running')}")
    check(value("vllm:generation_tokens", "_total")[0] >= 8, f"vllm:generation_tokens counted: {value('vllm:generation_tokens', '_total')}")
    usage = value("vllm:kv_cache_usage_perc")[0]
    check(0.0 <= usage <= 1.0, f"vllm:kv_cache_usage_perc is a fraction: {usage}")
    info = families["vllm:cache_config_info"].samples[0].labels
    check(info.get("block_size") == "16" and int(info.get("num_gpu_blocks", "0")) > 0, f"vllm:cache_config_info labels: {info}")


def main():
    proc, base = start(sys.argv[1])
    try:
        run(base)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    check(code == 0, f"graceful shutdown exits 0: {code}")
    print(f"openai {openai.__version__}: all checks passed")


if __name__ == "__main__":
    main()
