/**
 * Every statement the directory runs, built once per directory for its schema. The schema name is
 * the only text spliced in (configuration, quoted by `quoteSchemaName`); every value a login or a
 * caller supplies travels as a parameter.
 *
 * Case-insensitive comparisons lower both sides in SQL, with the database's own `lower()`, so that
 * they use the functional indexes and agree with them whatever the database's locale.
 */

/** Users come back with the field names of `DirectoryUser`; NULL columns are dropped by the caller. */
const USER_COLUMNS = (alias: string): string =>
  ['id', 'company', 'name', 'email', 'role', 'given_name AS "givenName"', 'family_name AS "familyName"', 'avatar']
    .map((column) => `${alias}.${column}`).join(', ')

export type Statements = ReturnType<typeof directoryStatements>

export function directoryStatements (s: string) {
  const user = USER_COLUMNS('u')
  const userValues = '$1, $2, $3, $4, $5, $6, $7, $8'
  return {
    getCompany: `SELECT id, name FROM ${s}.companies WHERE id = $1`,
    upsertCompany: `INSERT INTO ${s}.companies AS c (id, name) VALUES ($1, $2)
      ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name RETURNING c.id, c.name`,

    userByIdentity: `SELECT ${user} FROM ${s}.identities i JOIN ${s}.users u ON u.id = i.user_id
      WHERE i.provider = $1 AND i.subject = $2`,
    // Two users may share an email in different cases: the exact spelling wins, then the oldest.
    userByEmail: `SELECT ${user} FROM ${s}.users u WHERE lower(u.email) = lower($1)
      ORDER BY u.email = $1 DESC, u.created_at, u.id LIMIT 1`,
    userById: `SELECT ${user} FROM ${s}.users u WHERE u.id = $1`,
    listUsers: `SELECT ${user} FROM ${s}.users u ORDER BY u.created_at, u.id`,
    insertUser: `INSERT INTO ${s}.users AS u (id, company, name, email, role, given_name, family_name, avatar)
      VALUES (${userValues}) RETURNING ${user}`,
    upsertUser: `INSERT INTO ${s}.users AS u (id, company, name, email, role, given_name, family_name, avatar)
      VALUES (${userValues})
      ON CONFLICT (id) DO UPDATE SET company = EXCLUDED.company, name = EXCLUDED.name, email = EXCLUDED.email,
        role = EXCLUDED.role, given_name = EXCLUDED.given_name, family_name = EXCLUDED.family_name, avatar = EXCLUDED.avatar
      RETURNING ${user}`,
    // A NULL parameter keeps the column: a patch names only the fields it changes.
    updateUser: `UPDATE ${s}.users u SET name = coalesce($2, u.name), email = coalesce($3, u.email),
        role = coalesce($4, u.role), given_name = coalesce($5, u.given_name),
        family_name = coalesce($6, u.family_name), avatar = coalesce($7, u.avatar)
      WHERE u.id = $1 RETURNING ${user}`,
    /**
     * Links (provider, subject) to user $3 unless another user has it, and answers its owner either
     * way. On a conflict the no-op update locks the existing row until the transaction ends, so the
     * owner read next cannot be deleted in between; a concurrent insert of the same identity is
     * waited for, which is what makes concurrent first logins converge on one user.
     */
    claimIdentity: `INSERT INTO ${s}.identities AS i (provider, subject, user_id) VALUES ($1, $2, $3)
      ON CONFLICT (provider, subject) DO UPDATE SET user_id = i.user_id RETURNING i.user_id`,

    // Exact email first (the email column is set), else the email's domain.
    whitelistEntry: `SELECT company, role FROM ${s}.whitelist_entries
      WHERE lower(email) = lower($1) OR lower(domain) = lower($2)
      ORDER BY email IS NULL LIMIT 1`,
    upsertWhitelistEmail: `INSERT INTO ${s}.whitelist_entries (email, company, role) VALUES ($1, $2, $3)
      ON CONFLICT (lower(email)) DO UPDATE SET email = EXCLUDED.email, company = EXCLUDED.company, role = EXCLUDED.role`,
    upsertWhitelistDomain: `INSERT INTO ${s}.whitelist_entries (domain, company, role) VALUES ($1, $2, $3)
      ON CONFLICT (lower(domain)) DO UPDATE SET domain = EXCLUDED.domain, company = EXCLUDED.company, role = EXCLUDED.role`,

    // The no-op update makes a repeated addGroup answer the existing group.
    upsertGroup: `INSERT INTO ${s}.groups AS g (id, company, name) VALUES ($1, $2, $3)
      ON CONFLICT (company, name) DO UPDATE SET name = EXCLUDED.name RETURNING g.id, g.company, g.name`,
    groupsByName: `SELECT id, company, name FROM ${s}.groups WHERE company = $1 AND name = ANY ($2::text[])`,
    groupsByNameIgnoringCase: `SELECT id, company, name FROM ${s}.groups
      WHERE company = $1 AND lower(name) = ANY (SELECT lower(n) FROM unnest($2::text[]) AS n)`,
    // Names sort by code point (COLLATE "C"), as JavaScript's sort does, whatever the locale.
    userGroups: `SELECT g.id, g.company, g.name FROM ${s}.memberships m JOIN ${s}.groups g ON g.id = m.group_id
      WHERE m.user_id = $2 AND g.company = $1 ORDER BY g.name COLLATE "C"`,
    groupNamesOf: `SELECT g.name FROM ${s}.memberships m JOIN ${s}.groups g ON g.id = m.group_id
      WHERE m.user_id = $1 ORDER BY g.name COLLATE "C"`,

    // Shared locks keep the user and the groups from being deleted before the change commits.
    lockUser: `SELECT id FROM ${s}.users WHERE id = $1 FOR KEY SHARE`,
    lockGroups: `SELECT id FROM ${s}.groups WHERE id = ANY ($1::text[]) FOR KEY SHARE`,
    removeMemberships: `DELETE FROM ${s}.memberships WHERE user_id = $1 AND group_id = ANY ($2::text[])`,
    addMemberships: `INSERT INTO ${s}.memberships (user_id, group_id) SELECT $1, unnest($2::text[])
      ON CONFLICT (user_id, group_id) DO NOTHING`
  }
}
