/**
 * Every check the doctor runs against Keycloak, in the order they are reported, with what each needs.
 * (`config` comes first and apart: without a configuration there is nothing to ask Keycloak.) A check
 * that sends a credential needs `issuer`: the secret goes only where the realm is the configured one.
 */
import { checkClient, checkEndSession, checkRedirectUri } from './client-checks.js'
import { checkClock } from './clock-check.js'
import { checkDiscovery, checkEndpoints, checkIssuer, checkJwks } from './realm-checks.js'
import { checkOfflineAccess, checkRevocation } from './session-checks.js'
import type { KeycloakCheck } from './report.js'

export const KEYCLOAK_CHECKS: KeycloakCheck[] = [
  { id: 'discovery', needs: [], run: checkDiscovery },
  { id: 'issuer', needs: ['discovery'], run: checkIssuer },
  { id: 'endpoints', needs: ['discovery'], run: checkEndpoints },
  { id: 'jwks', needs: ['discovery'], run: checkJwks },
  // It sends the client secret: only to the token endpoint of a realm that is the configured one.
  // A discovery document naming another issuer is not this realm's, nor are the endpoints it lists.
  { id: 'client', needs: ['discovery', 'issuer'], run: checkClient },
  { id: 'redirect_uri', needs: ['discovery'], run: checkRedirectUri },
  { id: 'end_session', needs: ['discovery'], appliesTo: (config) => config.idpLogout, run: checkEndSession },
  // Sessions that follow Keycloak (session.revalidate_sec > 0), read from the realm's own document.
  { id: 'revocation', needs: ['discovery', 'issuer'], appliesTo: (config) => config.session.revalidateSec > 0, run: checkRevocation },
  { id: 'offline_access', needs: ['discovery', 'issuer'], appliesTo: (config) => config.session.revalidateSec > 0 && config.session.follows === 'user', run: checkOfflineAccess },
  { id: 'clock', needs: ['discovery'], run: checkClock }
]
