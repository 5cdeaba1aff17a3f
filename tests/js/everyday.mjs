// An everyday matrix-js-sdk session against a Ganglion server, without end-to-end encryption:
// register and log in, initial sync, the room list, a display name change, a room with an alias
// resolved through the directory, messages found by search, and typing and a read receipt seen by
// another user through sync. Exits 0 when every step passed, 1 on the first error, 2 on timeout.
//
// Usage: node everyday.mjs http://127.0.0.1:8008

import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const baseUrl = process.argv[2];
if (!baseUrl) {
    console.error("usage: node everyday.mjs <homeserver url>");
    process.exit(1);
}
const OVERALL_TIMEOUT_MS = 60_000;
const STEP_TIMEOUT_MS = 15_000;
logger.setLevel("warn");

const overall = setTimeout(() => {
    console.error(`timed out after ${OVERALL_TIMEOUT_MS} ms`);
    process.exit(2);
}, OVERALL_TIMEOUT_MS);

function step(name) {
    console.log(`step: ${name}`);
}

/** Polls `check` until it returns a truthy value, or fails after `ms`. */
async function waitFor(what, check, ms = STEP_TIMEOUT_MS) {
    const deadline = Date.now() + ms;
    for (;;) {
        const value = await check();
        if (value) return value;
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 100));
    }
}

/** Registers through User-Interactive Auth (m.login.dummy), as Element does. */
async function register(username, password) {
    const anon = sdk.createClient({ baseUrl });
    try {
        await anon.registerRequest({ username, password });
        throw new Error("registration without auth should ask for User-Interactive Auth");
    } catch (e) {
        if (e.httpStatus !== 401 || !e.data?.session) throw e;
        return anon.registerRequest({
            username,
            password,
            initial_device_display_name: "js-sdk test",
            auth: { type: "m.login.dummy", session: e.data.session },
        });
    }
}

/** Starts a client and waits for its initial sync. */
async function start(creds) {
    const client = sdk.createClient({
        baseUrl,
        accessToken: creds.access_token,
        userId: creds.user_id,
        deviceId: creds.device_id,
    });
    const prepared = new Promise((resolve, reject) => {
        client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
            if (state === "PREPARED") resolve();
            if (state === "ERROR") reject(data?.error ?? new Error("sync error"));
        });
    });
    await client.startClient({ initialSyncLimit: 10 });
    await Promise.race([
        prepared,
        new Promise((_, reject) => setTimeout(() => reject(new Error("initial sync timed out")), STEP_TIMEOUT_MS)),
    ]);
    return client;
}

const suffix = Math.random().toString(36).slice(2, 8);
const clients = [];

async function main() {
    step("register alice and bob, log alice in with her password");
    await register(`alice${suffix}`, "secret-a");
    const bobCreds = await register(`bob${suffix}`, "secret-b");
    const anon = sdk.createClient({ baseUrl });
    const aliceCreds = await anon.loginRequest({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: `alice${suffix}` },
        password: "secret-a",
    });
    if (!aliceCreds.access_token) throw new Error("login gave no access token");

    step("start both clients (initial sync)");
    const alice = await start(aliceCreds);
    const bob = await start(bobCreds);
    clients.push(alice, bob);

    step("room list is empty before any room exists");
    if (alice.getRooms().length !== 0) throw new Error(`unexpected rooms: ${alice.getRooms().map((r) => r.roomId)}`);

    step("create a public room with an alias; it shows up in the room list");
    const aliasLocal = `jssdk${suffix}`;
    const { room_id: roomId } = await alice.createRoom({
        name: "js-sdk room",
        room_alias_name: aliasLocal,
        preset: "public_chat",
    });
    await waitFor("the new room in alice's room list", () =>
        alice.getRooms().some((r) => r.roomId === roomId && r.getMyMembership() === "join"),
    );
    const server = alice.getUserId().split(":").slice(1).join(":");
    const alias = `#${aliasLocal}:${server}`;

    step("resolve the alias through the directory and join by it");
    const resolved = await bob.getRoomIdForAlias(alias);
    if (resolved.room_id !== roomId) throw new Error(`alias resolved to ${resolved.room_id}, not ${roomId}`);
    await bob.joinRoom(alias);
    await waitFor("bob in the room", () => bob.getRoom(roomId)?.getMyMembership() === "join");

    step("change alice's display name; bob sees it on her membership");
    await alice.setDisplayName("Alice JS");
    const profile = await alice.getProfileInfo(alice.getUserId());
    if (profile.displayname !== "Alice JS") throw new Error(`profile says ${JSON.stringify(profile)}`);
    await waitFor("alice's new name in bob's view of the room", () =>
        bob.getRoom(roomId)?.getMember(alice.getUserId())?.name === "Alice JS",
    );

    step("send messages and find one by search");
    await alice.sendTextMessage(roomId, "the pumpkin soup is ready");
    const { event_id: lastId } = await alice.sendTextMessage(roomId, "come and eat");
    const found = await alice.searchRoomEvents({ term: "pumpkin" });
    const bodies = found.results.map((r) => r.context.getEvent().getContent().body);
    if (!bodies.includes("the pumpkin soup is ready")) throw new Error(`search found ${JSON.stringify(bodies)}`);

    step("alice types; bob sees it through sync");
    await waitFor("alice's last message at bob", () => bob.getRoom(roomId)?.findEventById(lastId));
    await alice.sendTyping(roomId, true, 20_000);
    await waitFor("alice typing at bob", () => bob.getRoom(roomId)?.getMember(alice.getUserId())?.typing);

    step("bob sends a read receipt; alice sees it through sync");
    const lastAtBob = bob.getRoom(roomId).findEventById(lastId);
    await bob.sendReadReceipt(lastAtBob);
    await waitFor("bob's receipt at alice", () => alice.getRoom(roomId)?.getEventReadUpTo(bob.getUserId()) === lastId);

    step("done");
}

try {
    await main();
    for (const c of clients) c.stopClient();
    clearTimeout(overall);
    console.log("ok");
    process.exit(0);
} catch (e) {
    console.error(`failed: ${e?.stack ?? e}`);
    if (e?.data) console.error(`response: ${JSON.stringify(e.data)}`);
    for (const c of clients) c.stopClient();
    process.exit(1);
}
