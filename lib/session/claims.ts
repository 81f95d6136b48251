/**
 * What a ClearML session says about its holder: the claims of the session token (SPEC section 5 step
 * 10) and the identity `authenticate` builds from a credential (SPEC sections 7 and 10). Types, key
 * names and the identity of a directory user, so the session service, the token verifier and the
 * revalidation all take them from here.
 */
import type { CredentialKind } from '../diagnostics.js'
import type { Company, DirectoryUser, Role } from '../directory/user-directory.js'

export interface SessionIdentity {
  company: string
  user: string
  user_name: string
  role: Role
  company_name: string
}

/** The identity a session of `user` in `company` carries, at its login and after each revalidation. */
export function sessionIdentity (user: DirectoryUser, company: Company): SessionIdentity {
  return { company: company.id, user: user.id, user_name: user.name, role: user.role, company_name: company.name }
}

/** What a session follows at Keycloak (the `session.follows` setting), when it follows Keycloak at all. */
export type SessionFollows = 'user' | 'sso_session'

export interface SessionClaims {
  auth_type: 'Bearer'
  identity: SessionIdentity
  session_id: string
  /** `follows` is there when the session has a refresh token and is revalidated (SPEC section 12). */
  sso?: { provider: string, sid?: string, follows?: SessionFollows }
  iat: number
  exp: number
}

// Which kind of credential a request presented (SPEC section 10); events name it too.
export type { CredentialKind }

/**
 * What `authenticate` puts on `request.clearmlIdentity`: the identity, the session id (a Keycloak
 * token's `sid`) and expiry, and which kind of credential it came from.
 */
export interface ClearmlIdentity extends SessionIdentity {
  session_id: string
  exp: number
  credential: CredentialKind
}

/** Revocation key under which a back-channel logout revokes every session of one Keycloak session. */
export function keycloakSessionKey (sid: string): string {
  return `keycloak-sid:${sid}`
}

/** Revocation key that marks a session Keycloak ended (SPEC 12.3), so its refusal says `session_ended`. */
export function sessionEndedKey (sessionId: string): string {
  return `session-ended:${sessionId}`
}
