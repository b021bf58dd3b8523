"""The demo's local endpoint serves its rule-based models by the request's `model` name (never by prompt text),
through the real OpenAI client the stages use; an unknown model is an HTTP 404 as from a real server."""
from __future__ import annotations

import json

import openai
import pytest

from launch.demo.endpoint import LocalEndpoint
from launch.demo.responders import MODELS


def test_models_are_picked_by_name_not_by_prompt():
    prompt = [{"role": "user", "content": "<document>患者，男，49岁，右下腹疼痛3小时，诊断为急性阑尾炎。</document>"}]
    with LocalEndpoint(MODELS) as ep:
        client = openai.OpenAI(base_url=ep.base_url, api_key="x", max_retries=0)
        label = json.loads(client.chat.completions.create(model="demo-labeler", messages=prompt)
                           .choices[0].message.content)
        assert label["domain"] == "medical" and 0 <= label["quality"] <= 5
        # the same prompt to the doctor model gets a doctor's answer: the model name decides, not the text
        doctor = json.loads(client.chat.completions.create(model="demo-doctor", messages=prompt)
                            .choices[0].message.content)
        assert set(doctor) == {"answer"} and "建议" in doctor["answer"]
        with pytest.raises(openai.NotFoundError, match="not served here"):
            client.chat.completions.create(model="gpt-4o", messages=prompt)
        assert sorted(m.id for m in client.models.list().data) == sorted(MODELS)
        assert ep.hits == 3 and sum(ep.answered_keys.values()) == 2
