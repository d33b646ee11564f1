// Drives an aigne-hub with the real AIGNE client (`@aigne/aigne-hub` 0.10.16,
// `@aigne/core` 1.72.0) and prints one JSON object with what the client made of
// each call. Run by tests/api/aigne_client.rs.
//
//   AIGNE_HUB_API_URL=http://127.0.0.1:8080 HUB_KEY=aih_... node drive.mjs basic
//
// Scenarios (the first argument): `basic` (catalogue, chat, stream, tools, an
// AIGNE agent, images, wrong key, missing credit: needs HUB_POOR_KEY) and `slow`
// (a slow image and a slow failure: needs the `slow` provider).

import { AIGNEHubChatModel, AIGNEHubImageModel } from "@aigne/aigne-hub";
import { AIAgent, AIGNE } from "@aigne/core";

const baseURL = process.env.AIGNE_HUB_API_URL;
const apiKey = process.env.HUB_KEY;
if (!baseURL || !apiKey) throw new Error("AIGNE_HUB_API_URL and HUB_KEY are required");

const chatModel = (model, key = apiKey) => new AIGNEHubChatModel({ baseURL, apiKey: key, model });
const imageModel = (model) => new AIGNEHubImageModel({ baseURL, apiKey, model });
const hello = { messages: [{ role: "user", content: "Say hello" }] };

/** Runs a scenario; a thrown error becomes `{error, type}` in the output. */
async function attempt(fn) {
  try {
    return await fn();
  } catch (error) {
    return { error: error.message, type: error.type ?? null };
  }
}

async function basic() {
  const out = {};
  out.chatModels = await attempt(async () =>
    (await AIGNEHubChatModel.models()).map((m) => ({
      model: m.model,
      provider: m.provider,
      input: m.input_credits_per_token,
      output: m.output_credits_per_token,
    })),
  );
  out.imageModels = await attempt(async () => (await AIGNEHubImageModel.models()).map((m) => m.model));

  out.chat = await attempt(async () => {
    const result = await chatModel("aignehub/mock/gpt-mock").invoke(hello);
    return { text: result.text, model: result.model, usage: result.usage };
  });

  out.stream = await attempt(async () => {
    const stream = await chatModel("aignehub/mock/gpt-mock").invoke(hello, { streaming: true });
    const deltas = [];
    let json = {};
    for await (const chunk of stream) {
      if (chunk.delta?.text?.text) deltas.push(chunk.delta.text.text);
      if (chunk.delta?.json) json = { ...json, ...chunk.delta.json };
    }
    return { deltas, text: json.text, usage: json.usage };
  });

  out.tools = await attempt(async () => {
    const result = await chatModel("aignehub/mock/conf-tools").invoke({
      ...hello,
      tools: [
        {
          type: "function",
          function: {
            name: "get_weather",
            description: "Weather of a city",
            parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
          },
        },
      ],
    });
    return { toolCalls: result.toolCalls };
  });

  // How an AIGNE framework app uses it: the hub model behind an agent.
  out.agent = await attempt(async () => {
    const aigne = new AIGNE({ model: chatModel("aignehub/mock/gpt-mock") });
    const agent = AIAgent.from({ name: "greeter", instructions: "You greet people." });
    const context = aigne.newContext();
    const result = await context.invoke(agent, "Hi!");
    // `context.usage` is not returned: the client's AIGNEHubChatModel wraps a
    // second ChatModel and both add the same call's usage to it (0.10.16).
    return { message: result.message };
  });

  out.imageUrl = await attempt(async () => {
    const result = await imageModel("aignehub/mock/gpt-image-1").invoke({
      prompt: "a cat",
      outputFileType: "url",
      modelOptions: { responseFormat: "b64_json" },
    });
    return { images: result.images, usage: result.usage, model: result.model };
  });
  // `file`: the client downloads the hub's URL itself, without a key.
  out.imageFile = await attempt(async () => {
    const result = await imageModel("aignehub/mock/gpt-image-1").invoke({
      prompt: "a cat",
      outputFileType: "file",
      modelOptions: { responseFormat: "b64_json" },
    });
    return { images: result.images, usage: result.usage };
  });

  out.wrongKey = await attempt(() => chatModel("aignehub/mock/gpt-mock", "aih_wrong_key").invoke(hello));
  out.notEnough = await attempt(() => chatModel("aignehub/mock/gpt-mock", process.env.HUB_POOR_KEY).invoke(hello));
  out.unknownModel = await attempt(() => chatModel("aignehub/mock/no-such-model").invoke(hello));
  return out;
}

async function slow() {
  const out = {};
  const started = Date.now();
  out.slowImage = await attempt(async () => {
    const result = await imageModel("aignehub/slow/gpt-image-1").invoke({ prompt: "a slow cat", outputFileType: "url" });
    return { images: result.images.length, usage: result.usage };
  });
  out.slowImageMs = Date.now() - started;
  out.slowFailure = await attempt(() => chatModel("aignehub/slow/slow-fail").invoke(hello));
  return out;
}

const scenarios = { basic, slow };
const name = process.argv[2] ?? "basic";
if (!scenarios[name]) throw new Error(`unknown scenario ${name}`);
process.stdout.write(`${JSON.stringify(await scenarios[name]())}\n`);
