// Evaluated in a page on the hub's origin: a pulsewire.js Client that records what it sees in
// window.h (h.server: what server-side subscriptions delivered). Argument: { user, channels,
// options }. Resolves with the transport once connected and subscribed to every channel.
async ({ user, channels, options }) => {
  const { Client } = await import("/pulsewire.js");
  const getToken = async () => {
    const response = await fetch(`/demo/token?user=${encodeURIComponent(user)}`);
    return (await response.json()).token;
  };
  const h = (window.h = { events: [], pubs: {}, subscribed: {}, errors: [] });
  const client = (h.client = new Client(location.origin, { getToken, ...options }));
  client.on("state", ({ state }) => h.events.push(["state", state]));
  client.on("connected", ({ transport }) => h.events.push(["connected", transport]));
  client.on("disconnected", ({ code, reconnect }) => {
    h.events.push(["disconnected", code, reconnect]);
  });
  client.on("error", ({ type, transport }) => h.events.push(["error", type, transport ?? null]));
  client.on("message", ({ data }) => h.events.push(["message", data]));
  // server-side subscriptions: the client's own events
  h.server = { subscribed: [], pubs: {} };
  client.on("subscribed", ({ channel, recovering, recovered }) => {
    h.server.subscribed.push([channel, recovering, recovered]);
  });
  client.on("publication", ({ channel, data }) => (h.server.pubs[channel] ??= []).push(data));
  client.on("unsubscribed", ({ channel, code }) => h.events.push(["unsubscribed", channel, code]));
  h.subscribe = (channel) => {
    h.pubs[channel] = [];
    h.subscribed[channel] = [];
    return client.subscribe(channel, {
      onPublication: (pub) => h.pubs[channel].push(pub.data),
      onSubscribed: ({ recovering, recovered }) => {
        h.subscribed[channel].push({ recovering, recovered });
      },
      onUnsubscribed: ({ code }) => h.events.push(["unsubscribed", channel, code]),
      onError: (error) => h.errors.push(String(error)),
    });
  };
  const subs = channels.map((channel) => h.subscribe(channel));
  client.connect();
  await client.ready();
  await Promise.all(subs.map((sub) => sub.ready()));
  return client.transport;
};
