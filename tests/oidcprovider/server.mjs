// The OpenID Connect provider that CVLAN's sign-in tests start on loopback: panva's oidc-provider
// (OpenID Certified) with its built-in login and consent pages. Usage: node server.mjs CONFIG.json
//
// CONFIG.json: {"port": N, "issuer": URL, "clients": [...], "jwks": {"keys": [...]},
//               "accounts": FILE}. The accounts file is read at every sign-in, so a test can change a
// user's groups between two sign-ins: {"SUBJECT": {"email": ..., "email_verified": true,
// "groups": [...]}}. The login page takes any password: the login name is the subject.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

function account(id) {
  const accounts = JSON.parse(readFileSync(config.accounts, 'utf8'));
  const a = accounts[id];
  if (!a) return undefined;
  return {
    accountId: id,
    async claims() {
      return { sub: id, email: a.email, email_verified: a.email_verified, groups: a.groups };
    },
  };
}

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  cookies: { keys: ['cvlan-test-provider-cookie-key'] },
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups', 'offline_access'],
  conformIdTokenClaims: false,
  ttl: { IdToken: config.id_token_ttl || 3600 },
  features: { devInteractions: { enabled: true }, deviceFlow: { enabled: true } },
  pkce: { required: () => true, methods: ['S256'] },
  findAccount: async (ctx, id) => account(id),
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`listening ${config.issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
