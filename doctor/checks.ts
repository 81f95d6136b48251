/**
 * Every check the doctor runs against Keycloak, in the order they are reported, with what each needs.
 * (`config` comes first and apart: without a configuration there is nothing to ask Keycloak.)
 */
import { checkClient, checkEndSession, checkRedirectUri } from './client-checks.js'
import { checkClock } from './clock-check.js'
import { checkDiscovery, checkEndpoints, checkIssuer, checkJwks } from './realm-checks.js'
import type { KeycloakCheck } from './report.js'

export const KEYCLOAK_CHECKS: KeycloakCheck[] = [
  { id: 'discovery', needs: [], run: checkDiscovery },
  { id: 'issuer', needs: ['discovery'], run: checkIssuer },
  { id: 'endpoints', needs: ['discovery'], run: checkEndpoints },
  { id: 'jwks', needs: ['discovery'], run: checkJwks },
  { id: 'client', needs: ['discovery'], run: checkClient },
  { id: 'redirect_uri', needs: ['discovery'], run: checkRedirectUri },
  { id: 'end_session', needs: ['discovery'], appliesTo: (config) => config.idpLogout, run: checkEndSession },
  { id: 'clock', needs: ['discovery'], run: checkClock }
]
