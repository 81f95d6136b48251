/**
 * fastify-clearml-keycloak: ClearML's "Keycloak OAuth" single sign-on as a Fastify 5 plugin.
 */
import { clearmlKeycloak } from './plugins/clearml-keycloak.js'

export default clearmlKeycloak
export { clearmlKeycloak }
export type { ClearmlKeycloakOptions, ClearmlKeycloakDecorator, ClearmlIdentity, SupportedModes } from './plugins/clearml-keycloak.js'
export { loadConfig, readConfig, type KeycloakConfig, type KeycloakConfigOverrides, type ConfigWarning } from './lib/config.js'
export { KeycloakConfigSchema } from './schemas/config.js'
export { ConfigError, SsoError, type SsoErrorCode, type ConfigProblem } from './lib/errors.js'
export { MemoryDirectory, type WhitelistSeed } from './lib/memory-directory.js'
export type { UserDirectory, DirectoryUser, DirectoryGroup, Company, WhitelistEntry, NewUser, UserPatch, Role } from './lib/directory.js'
export type { Identity, Claims } from './lib/identity.js'
export type { LoginResult } from './lib/login.js'
export { MemoryRevocationStore, type RevocationStore } from './lib/revocations.js'
export type { IssueToken, IssueTokenContext } from './lib/sso.js'
export { decideSignup, resolveRole, planGroupSync, chooseSignupTarget, groupNameCandidates, whitelistQuery, adminGroupsOf } from './lib/policy.js'
export { mapClaims } from './lib/identity.js'
export { testDirectory } from './lib/test-directory.js'
/** Log paths to redact in the host's pino logger: the session cookie and bearer tokens. */
export const redactPaths = ['req.headers.cookie', 'req.headers.authorization', 'res.headers["set-cookie"]']
