"""access version, download tokens, 64-bit counters

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():

    op.create_table('download_tokens',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('file_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('access_version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('revoked_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['file_id'], ['files.id'], name=op.f('fk_download_tokens_file_id_files')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_download_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_download_tokens_token_hash'))
    )
    with op.batch_alter_table('download_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_download_tokens_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_download_tokens_file_id'), ['file_id'], unique=False)

    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('access_version', sa.Integer(), server_default='0', nullable=False))
        # 32-bit counters overflow on PostgreSQL (SQLite's INTEGER is 64-bit already).
        batch_op.alter_column('max_downloads', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)
        batch_op.alter_column('downloads', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)

    with op.batch_alter_table('blobs', schema=None) as batch_op:
        batch_op.alter_column('refcount', existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)


def downgrade():

    with op.batch_alter_table('blobs', schema=None) as batch_op:
        batch_op.alter_column('refcount', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)

    with op.batch_alter_table('files', schema=None) as batch_op:
        batch_op.alter_column('downloads', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)
        batch_op.alter_column('max_downloads', existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)
        batch_op.drop_column('access_version')

    with op.batch_alter_table('download_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_download_tokens_file_id'))
        batch_op.drop_index(batch_op.f('ix_download_tokens_expires_at'))

    op.drop_table('download_tokens')
