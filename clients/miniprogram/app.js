// The report page's configuration, in one place.
//
// relayBaseUrl: the relay (https:// in production; its host must be in the
//   mini-program's request and socket legal domains, as https:// and wss://).
// tokenUrl: the product backend's endpoint that mints a subscriber token for
//   the signed-in user and one execution: GET <tokenUrl>?execution_id=<id>
//   answers {"token": "<jwt>"}. The relay itself never sees the user's session.
// client: options for createClient (see docs/client.md), e.g. HIDE_GRACE.
App({
  globalData: {
    relay: {
      relayBaseUrl: 'https://relay.example.com',
      tokenUrl: 'https://api.example.com/v2/relay-token',
      client: {}
    }
  }
});
