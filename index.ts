/**
 * fastify-clearml-keycloak: ClearML's "Keycloak OAuth" single sign-on as a Fastify 5 plugin.
 */
import { clearmlKeycloak } from './plugins/clearml-keycloak.js'

export default clearmlKeycloak
export { clearmlKeycloak }
export type { ClearmlKeycloakOptions, ClearmlKeycloakDecorator, ClearmlIdentity, SupportedModes, BasicLoginOption } from './plugins/clearml-keycloak.js'
export type { AuthenticateHook } from './plugins/authenticate.js'
export type { RequireLoginHook } from './plugins/require-login.js'
export { loadConfig, readConfig, type KeycloakConfig, type KeycloakConfigOverrides, type ConfigWarning, type ReadConfigResult } from './lib/config/settings.js'
export { KeycloakConfigSchema } from './schemas/config.js'
export { ConfigError, SsoError, type SsoErrorCode, type ConfigProblem } from './lib/errors.js'
export { MemoryDirectory, type WhitelistSeed, type DirectoryFixture } from './lib/directory/memory-directory.js'
export type { UserDirectory, DirectoryUser, DirectoryGroup, Company, WhitelistEntry, NewUser, UserPatch, Role, LinkedIdentity } from './lib/directory/user-directory.js'
export type { Identity, Claims } from './lib/rules/identity.js'
export type { LoginResult } from './lib/rules/login.js'
export { MemoryRevocationStore, type RevocationStore, type StoreLog } from './lib/session/revocations.js'
export type { SessionFollowStore, RefreshKey, RefreshState, RefreshLease, SessionRevision } from './lib/session/follow-store.js'
export type { IssueToken, IssueTokenContext } from './lib/sso.js'
// The service behind `fastify.keycloak.sso`, exported by name only: its members are internal.
export type { KeycloakSso } from './lib/sso.js'
export type { SessionIdentity, CredentialKind } from './lib/session/claims.js'
export type { BearerOptions } from './lib/keycloak/bearer.js'
export {
  decideSignup, resolveRole, planGroupSync, chooseSignupTarget, groupNameCandidates, whitelistQuery, adminGroupsOf,
  type SignupDecision, type SignupTarget, type GroupSyncPlan, type WhitelistQuery, type GroupsConfig
} from './lib/rules/policy.js'
export { mapClaims } from './lib/rules/identity.js'
export { diagnosticsChannels, type LoginEvent, type IdpCallEvent, type IdpEndpoint, type JwksFetchEvent, type JwksFetchReason, type AuthRefusedEvent, type RevalidateEvent } from './lib/diagnostics.js'
export type { Explanation, ExplainInput, ExplainScope } from './lib/rules/explain.js'
export type { LoginPlan, UserStatus, SignupVerdict, RoleVerdict, ProfileChange, ProfileField } from './lib/rules/login.js'
export { testDirectory, type DirectoryFactory, type DirectoryContractTest, type TestDirectoryOptions } from './lib/directory/test-directory.js'
/** Log paths to redact in the host's pino logger: the session cookie and bearer tokens. */
export const redactPaths = ['req.headers.cookie', 'req.headers.authorization', 'res.headers["set-cookie"]']
