// Conversations live in this browser's IndexedDB, never on the server.
import { openDB } from "idb";

const dbPromise = openDB("aibox-chat", 1, {
  upgrade(db) {
    const store = db.createObjectStore("conversations", { keyPath: "id" });
    store.createIndex("updated", "updated");
  },
});

// The side list needs only titles: the page keeps the one open conversation in memory, not every
// conversation's messages (those stay in IndexedDB until opened).
export async function listConversations() {
  const all = await (await dbPromise).getAllFromIndex("conversations", "updated");
  return all.reverse().map(({ id, title, updated }) => ({ id, title, updated }));
}

export async function saveConversation(conv) {
  await (await dbPromise).put("conversations", conv);
}

export async function getConversation(id) {
  return (await dbPromise).get("conversations", id);
}

export async function deleteAll() {
  await (await dbPromise).clear("conversations");
}

export function newId() {
  return Date.now().toString(36) + Math.random().toString(36).slice(2, 10);
}
