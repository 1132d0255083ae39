// Long documents (issue 17): when a document does not fit the model's context and the box has an
// embedding or rerank model, the page keeps the whole text until the question is known, then asks
// the front door (POST /v1/aibox/docpick) for the parts most relevant to it and sends those, saying
// how many parts were used. Without such a model the page keeps the start of the document, as before.
import { getLang } from "./i18n.js";

const STRINGS = {
  "zh-CN": {
    long: (name, chars) => `《${name}》共 ${chars} 字，超出模型可处理的长度：发送问题时将选取文档中与问题最相关的部分。`,
    picking: (name) => `正在从《${name}》中选取与问题最相关的部分…`,
    picked: (name, n, total) => `已选取文档中最相关的 ${n} 段（共 ${total} 段），来自《${name}》。`,
    failed: (why) => `未能选取相关部分（${why}），只使用了文档的开头部分。`,
    forbidden: () => "此密钥无权使用文档检索模型",
  },
  en: {
    long: (name, chars) => `“${name}” (${chars} characters) is longer than the model can take: the parts most relevant to your question will be picked when you send it.`,
    picking: (name) => `Picking the parts of “${name}” most relevant to the question…`,
    picked: (name, n, total) => `Used the ${n} most relevant parts (of ${total}) of “${name}”.`,
    failed: (why) => `Could not pick the relevant parts (${why}); only the start of the document was used.`,
    forbidden: () => "this key may not use the box's document search models",
  },
};

export function dt(key, ...args) {
  const table = STRINGS[getLang()] || STRINGS["zh-CN"];
  return table[key](...args);
}

// Why a pick was refused, when the reason is the pick's own: a key whose scope has no embedding or
// rerank model gets 403 (it may still chat; the page's sentence for 403 says it may not). Else null.
export function pickRefusal(err) {
  return err && err.status === 403 ? dt("forbidden") : null;
}

// Does the box serve an embedding or rerank model (the front door's /v1/models names each role)?
export async function hasRetrieval(api) {
  try {
    const body = await (await api("/v1/models")).json();
    return (body.data || []).some((m) => m.role === "embedding" || m.role === "rerank");
  } catch {
    return false;
  }
}

// The parts of doc.full most relevant to the question, within budget tokens, in the document's order.
export async function pickParts(api, doc, question, budget) {
  const response = await api("/v1/aibox/docpick", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text: doc.full, question, budget_tokens: budget }),
  });
  const body = await response.json();
  return {
    name: doc.name,
    chars: doc.chars,
    text: body.chunks.map((c) => c.text).join("\n……\n"),
    picked: body.picked,
    total: body.chunks_total,
    method: body.method,
  };
}
