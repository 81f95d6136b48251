import { loadConfig, type KeycloakConfig, type KeycloakConfigOverrides } from '../../index.js'

/** A resolved config for rule tests: the minimal Keycloak settings plus `overrides`. */
export function testConfig (overrides: KeycloakConfigOverrides = {}): KeycloakConfig {
  return loadConfig({}, { baseUrl: 'https://kc.example.com/realms/clearml', clientId: 'clearml', clientSecret: 'secret', tokenSecret: 'token-secret', ...overrides })
}
