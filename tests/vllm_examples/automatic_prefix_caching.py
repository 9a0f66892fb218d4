"""Automatic prefix caching: the second query shares the long table with the first, so its
prefill starts where the cached blocks end. (vLLM's example, with a shorter table.)"""

import time

from folovllm import LLM, SamplingParams

LONG_PROMPT = (
    "You are an assistant that reads markdown tables. Here is one.\n# Table\n"
    + """
| ID | Name | Age | Job | Country |
|----|------|-----|-----|---------|
| 1 | Ana Silva | 31 | Pilot | Brazil |
| 2 | Ben Okafor | 45 | Baker | Nigeria |
| 3 | Chen Wei | 27 | Nurse | China |
| 4 | Dora Novak | 52 | Judge | Croatia |
| 5 | Emil Berg | 38 | Potter | Norway |
| 6 | Farah Aziz | 29 | Coder | Egypt |
"""
)


def get_generation_time(llm, sampling_params, prompts):
    start_time = time.time()
    output = llm.generate(prompts, sampling_params=sampling_params)
    end_time = time.time()
    print("-" * 30)
    print(f"Output: {output[0].outputs[0].text}")
    print(f"Generation time: {end_time - start_time} seconds.")
    print(f"Cached prompt tokens: {output[0].num_cached_tokens}")
    print("-" * 30)


def main():
    llm = LLM(model="Qwen/Qwen3-0.6B", enable_prefix_caching=True)
    sampling_params = SamplingParams(temperature=0, max_tokens=100)
    get_generation_time(llm, sampling_params, LONG_PROMPT + "Question: how old is Ana Silva? Your answer: Ana Silva is ")
    get_generation_time(llm, sampling_params, LONG_PROMPT + "Question: how old is Emil Berg? Your answer: Emil Berg is ")


if __name__ == "__main__":
    main()
