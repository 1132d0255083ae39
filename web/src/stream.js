// OpenAI-style SSE streams, read with fetch so the request carries the key and can be aborted.

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function apiError(response) {
  let message = `HTTP ${response.status}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch {
    /* not JSON: keep the status */
  }
  return new ApiError(response.status, message, code);
}

// Yields each `data:` payload (parsed JSON) until `[DONE]` or the end of the body.
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = block
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

// DeepSeek-R1-style models either send their thinking in `delta.reasoning_content`, or inline in
// the content as `<think>…</think>` (some templates open the tag in the prompt, so only the
// closing tag arrives). Split the raw content into { reasoning, answer, thinking }.
export function splitThink(raw) {
  const open = raw.match(/^\s*<think>/);
  const closeAt = raw.indexOf("</think>");
  if (open) {
    const body = raw.slice(open[0].length);
    const end = body.indexOf("</think>");
    if (end < 0) return { reasoning: body, answer: "", thinking: true };
    return { reasoning: body.slice(0, end), answer: body.slice(end + 8).replace(/^\s+/, ""), thinking: false };
  }
  if (closeAt >= 0) {
    return { reasoning: raw.slice(0, closeAt), answer: raw.slice(closeAt + 8).replace(/^\s+/, ""), thinking: false };
  }
  // A partial "<thi" at the very start is held back until it is known not to be a tag.
  if (/^\s*<(t(h(i(n(k)?)?)?)?)?$/.test(raw)) return { reasoning: "", answer: "", thinking: false };
  return { reasoning: "", answer: raw, thinking: false };
}
