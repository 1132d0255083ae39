// Every sentence the page shows, in Chinese first and English.
const STRINGS = {
  "zh-CN": {
    title: "AI 助手",
    tagline: "本机部署的 AI 助手，对话内容只保存在您的浏览器中。",
    keyLabel: "访问密钥",
    keyHint: "密钥由信息化部门（IT 管理员）发放，形如 aibox-…",
    signIn: "登录",
    signingIn: "正在验证…",
    signOut: "退出登录",
    keyWrong: "密钥不正确或已失效。请检查是否完整粘贴，或向 IT 管理员申请新的密钥。",
    keyForbidden: "此密钥没有使用对话功能的权限，请联系 IT 管理员。",
    keyQuota: "此密钥今天的用量已达上限，请明天再试或联系 IT 管理员。",
    offline: "无法连接到 AI 服务。请确认网络连接，或请 IT 管理员检查服务是否运行。",
    noModels: "暂时没有可用的对话模型，请联系 IT 管理员。",
    busy: "服务正忙，请稍后再试。",
    language: "English",
    languageLabel: "切换到英文",
    newChat: "新对话",
    conversations: "对话记录",
    exportMd: "导出 Markdown",
    clearAll: "清空全部对话",
    confirmClear: "确定删除本浏览器中的全部对话吗？此操作无法撤销。",
    model: "模型",
    preset: "任务",
    presetNone: "通用对话",
    placeholder: "输入问题，Enter 发送，Shift+Enter 换行",
    messageLabel: "输入消息",
    send: "发送",
    stop: "停止",
    regenerate: "重新生成",
    copy: "复制",
    copied: "已复制",
    edit: "编辑",
    saveSend: "保存并发送",
    cancel: "取消",
    attach: "添加文档",
    attachHint: "支持 .txt .md .docx .pdf",
    removeDoc: "移除文档",
    reading: "正在读取文档…",
    docReady: (name, chars) => `已添加《${name}》，共 ${chars} 字。`,
    docTruncated: (name, used, total) =>
      `文档《${name}》共 ${total} 字，超出模型可处理的长度，只使用了前 ${used} 字。`,
    docPrompt: (name, text, question) =>
      `以下是文档《${name}》的内容：\n\n${text}\n\n请根据上述文档回答：${question}`,
    thinking: "正在思考…",
    thought: (s) => `已深度思考 ${s} 秒`,
    stopped: "（已停止）",
    you: "我",
    assistant: "助手",
    empty: "有什么可以帮您？可以先在上方选择任务，例如公文写作或摘要。",
    untitled: "新对话",
    errorPrefix: "出错了：",
  },
  en: {
    title: "AI Assistant",
    tagline: "An AI assistant running on this box. Conversations stay in your browser.",
    keyLabel: "Access key",
    keyHint: "Your IT administrator gives out keys; they look like aibox-…",
    signIn: "Sign in",
    signingIn: "Checking…",
    signOut: "Sign out",
    keyWrong: "This key is wrong or no longer valid. Check that you pasted all of it, or ask your IT administrator for a new one.",
    keyForbidden: "This key may not use chat. Please contact your IT administrator.",
    keyQuota: "This key has used up today's quota. Try again tomorrow or contact your IT administrator.",
    offline: "Cannot reach the AI service. Check the network, or ask IT to check that the service is running.",
    noModels: "No chat model is available right now. Please contact your IT administrator.",
    busy: "The service is busy; please try again shortly.",
    language: "中文",
    languageLabel: "Switch to Chinese",
    newChat: "New chat",
    conversations: "Conversations",
    exportMd: "Export Markdown",
    clearAll: "Delete all chats",
    confirmClear: "Delete every conversation stored in this browser? This cannot be undone.",
    model: "Model",
    preset: "Task",
    presetNone: "General chat",
    placeholder: "Type a question. Enter sends, Shift+Enter starts a new line",
    messageLabel: "Message",
    send: "Send",
    stop: "Stop",
    regenerate: "Regenerate",
    copy: "Copy",
    copied: "Copied",
    edit: "Edit",
    saveSend: "Save and send",
    cancel: "Cancel",
    attach: "Attach document",
    attachHint: ".txt .md .docx .pdf",
    removeDoc: "Remove document",
    reading: "Reading the document…",
    docReady: (name, chars) => `Attached “${name}”, ${chars} characters.`,
    docTruncated: (name, used, total) =>
      `“${name}” has ${total} characters, more than the model can take; only the first ${used} are used.`,
    docPrompt: (name, text, question) =>
      `Here is the document “${name}”:\n\n${text}\n\nUsing the document above, answer: ${question}`,
    thinking: "Thinking…",
    thought: (s) => `Thought for ${s} s`,
    stopped: "(stopped)",
    you: "You",
    assistant: "Assistant",
    empty: "How can I help? Pick a task above, such as official writing or a summary.",
    untitled: "New chat",
    errorPrefix: "Error: ",
  },
};

export const LANGS = ["zh-CN", "en"];
let lang = "zh-CN";

export function setLang(value) {
  lang = LANGS.includes(value) ? value : "zh-CN";
  document.documentElement.lang = lang;
  return lang;
}

export const getLang = () => lang;

export function t(key, ...args) {
  const v = STRINGS[lang][key] ?? STRINGS["zh-CN"][key] ?? key;
  return typeof v === "function" ? v(...args) : v;
}
